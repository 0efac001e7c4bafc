"""Spatially tiled Wan VAE decode/encode with overlap blending, for bounded memory.

A 1024x1024 image or a 17-frame 432x432 clip through the full-size decoder needs
several GB of activations at full resolution. Tiling cuts the latent grid into equal
overlapping tiles (equal, so every tile reuses one compiled program), runs each tile
through the exact causal chunked path of `wan`, and blends the overlaps with linear
ramps, accumulating on the host. Peak memory is then set by the tile, not the image.

Not bit-identical to the untiled result: the middle-block attention is global within a
frame and the convolutions see zero padding at tile borders. Overlap hides the seams;
tests/vae/test_tiling.py states the error on a small case.
"""
from __future__ import annotations

import numpy as np

from showo2_jax.vae import wan
from showo2_jax.vae.wan import WanVAEConfig


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Start offsets of equal tiles covering [0, size); the last one is flush with the end."""
  if size <= tile:
    return [0]
  if not 0 <= overlap < tile:
    raise ValueError(f"tiling: overlap {overlap} must be in [0, tile={tile})")
  starts = list(range(0, size - tile, tile - overlap))
  return starts + [size - tile]


def _ramp(length: int, start: int, total: int, ramp: int) -> np.ndarray:
  """Blend weights along one axis: rising over `ramp` entries unless at the image edge."""
  i = np.arange(length, dtype=np.float32) + 0.5
  w = np.ones(length, np.float32)
  if ramp > 0 and start > 0:
    w *= np.minimum(1.0, i / ramp)
  if ramp > 0 and start + length < total:
    w *= np.minimum(1.0, (length - i) / ramp)
  return w


def _tiled(fn, x, tile, overlap, scale_in, scale_out):
  """Applies fn to spatial tiles of x (B, T, H, W, C) and blends its outputs.

  tile/overlap are in latent units; the input is scale_in and the output scale_out times
  that. fn returns a tuple of (B, T', H', W', C') arrays, each blended the same way.
  """
  h, w = x.shape[2] // scale_in, x.shape[3] // scale_in
  th, tw = min(tile, h), min(tile, w)
  acc, weight = None, None
  for y0 in tile_starts(h, tile, overlap):
    wy = _ramp(th * scale_out, y0 * scale_out, h * scale_out, overlap * scale_out)
    for x0 in tile_starts(w, tile, overlap):
      wx = _ramp(tw * scale_out, x0 * scale_out, w * scale_out, overlap * scale_out)
      part = x[:, :, y0 * scale_in:(y0 + th) * scale_in, x0 * scale_in:(x0 + tw) * scale_in]
      outs = [np.asarray(o) for o in fn(part)]
      if acc is None:
        acc = [np.zeros(o.shape[:2] + (h * scale_out, w * scale_out) + o.shape[4:], np.float32)
               for o in outs]
        weight = np.zeros((h * scale_out, w * scale_out, 1), np.float32)
      wt = (wy[:, None] * wx[None, :])[:, :, None]
      ys, xs = slice(y0 * scale_out, (y0 + th) * scale_out), slice(x0 * scale_out,
                                                                  (x0 + tw) * scale_out)
      for a, o in zip(acc, outs):
        a[:, :, ys, xs] += o * wt
      weight[ys, xs] += wt
  return [a / weight for a in acc]


def decode_video_tiled(params, latents, cfg: WanVAEConfig, *, tile: int = 32, overlap: int = 8,
                       clamp: bool = True, channels_last: bool = False) -> np.ndarray:
  """`wan.decode_video` in overlapping latent tiles of tile x tile (default 256 px).

  Returns a host numpy float32 array in the input's layout.
  """
  ndim = np.ndim(latents)
  wan.check_latent_shape(np.shape(latents), cfg, channels_last=channels_last)
  z = np.asarray(wan.to_channels_last(latents, channels_last, "decode"))
  fn = lambda part: (wan.decode_video(params, part, cfg, clamp=False, channels_last=True),)
  (out,) = _tiled(fn, z, tile, overlap, 1, cfg.spatial_factor)
  if clamp:
    np.clip(out, -1.0, 1.0, out=out)
  return np.asarray(wan.from_channels_last(out, channels_last, ndim))


def encode_posterior_tiled(params, video, cfg: WanVAEConfig, *, tile: int = 32, overlap: int = 8,
                           channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """`wan.encode_posterior` in overlapping pixel tiles of 8*tile (blended in latent space)."""
  ndim = np.ndim(video)
  wan.check_video_shape(np.shape(video), cfg, channels_last=channels_last)
  x = np.asarray(wan.to_channels_last(video, channels_last, "encode"))
  fn = lambda part: wan.encode_posterior(params, part, cfg, channels_last=True)
  mu, logvar = _tiled(fn, x, tile, overlap, cfg.spatial_factor, 1)
  return tuple(np.asarray(wan.from_channels_last(a, channels_last, ndim))
               for a in (mu, logvar))
