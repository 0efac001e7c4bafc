"""Wan2.1 3D causal VAE (Show-o2's image/video tokenizer) in Flax linen.

Parity target: `WanVAE_` of the original `wan/modules/vae.py` as Show-o2 uses it
(spec section 6). Internally everything is channel-last, (B, T, H, W, C), because that
is what XLA convolutions want; the public functions at the bottom take and return the
original's channel-first (B, C, T, H, W) arrays unless `channels_last=True`.

The original encodes a clip in causal chunks of 1, 4, 4, ... frames and decodes one
latent frame at a time, keeping the last input frames of every temporal convolution
in a mutable list. Here that cache is an explicit pytree returned by each chunk call:
the first chunk (which the original treats specially: down3d passes its frame through,
up3d skips its time conv) runs on its own with `cache=None`, and the remaining chunks
are one `jax.lax.scan`, so a clip compiles once per shape.

A zero-filled cache is exactly the original's zero front padding, which is why every
cache here has a fixed length (2 frames, 1 for down3d) from the first chunk on. With a
single frame and no cache, the two earliest taps of a 3-tap conv only see zeros, so
the first chunk (all of an image) runs as 2D convolutions with the last tap only.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Latent normalisation of Wan2.1 (spec 6.5), per latent channel.
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Frames per encoder chunk after the first one (hard-coded in the original).
ENCODE_CHUNK_FRAMES = 4


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Hyper-parameters of the original constructor (names kept, typo included).

  Hashable, so it can be a static argument of `jax.jit`. `dtype` is the compute dtype of
  the convolutions and attention (the original's autocast dtype); norms always run in
  float32 as under autocast, and outputs come back as float32.
  """
  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN_LATENTS_STD
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean",
                 "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
          f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
          f"entries, got {self.temperal_downsample}")
    if self.attn_scales:
      # The original builds such blocks but its cached forward calls them with cache
      # arguments they do not take, so no checkpoint of that shape can be run there.
      raise ValueError(f"attn_scales={self.attn_scales}: attention inside the stages is not "
                       "supported (the original's chunked forward cannot run it either)")
    if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
      raise ValueError(
          f"latents_mean/latents_std need z_dim = {self.z_dim} entries, got "
          f"{len(self.latents_mean)}/{len(self.latents_std)}")

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temperal_downsample)

  @classmethod
  def from_config_dict(cls, cfg, **overrides) -> "WanVAEConfig":
    """From an ml_collections ConfigDict (`configs.models.wan_vae()`) or a plain dict."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    if "base_dim" in d:  # diffusers AutoencoderKLWan config.json
      d["dim"] = d["base_dim"]
      variant = {k: d.get(k) for k in ("decoder_base_dim", "is_residual", "patch_size",
                                       "in_channels", "out_channels")}
      if (variant["is_residual"] or variant["patch_size"]
          or variant["decoder_base_dim"] not in (None, d["dim"])
          or variant["in_channels"] not in (None, 3) or variant["out_channels"] not in (None, 3)):
        raise ValueError(f"not a Wan2.1 VAE config (Wan2.2-style fields {variant}); only "
                         "the Wan2.1 architecture is implemented")
    d.update(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})

  @classmethod
  def from_json(cls, path, **overrides) -> "WanVAEConfig":
    """From the fixture's config.json (or a diffusers AutoencoderKLWan config.json)."""
    d = json.loads(Path(path).read_text())
    if float(d.get("dropout", 0.0)) != 0.0:
      raise ValueError(f"{path}: dropout {d['dropout']} is not supported (inference only)")
    return cls.from_config_dict(d, **overrides)


def encoder_layout(cfg: WanVAEConfig) -> list[tuple[str, int, int]]:
  """(kind, in_channels, out_channels) of `encoder.downsamples.{i}`, as the original builds it."""
  dims = [cfg.dim * u for u in (1,) + cfg.dim_mult]
  layers = []
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      layers.append(("residual", cin, cout))
      cin = cout
    if i != len(cfg.dim_mult) - 1:
      layers.append(("downsample3d" if cfg.temperal_downsample[i] else "downsample2d",
                     cout, cout))
  return layers


def decoder_layout(cfg: WanVAEConfig) -> list[tuple[str, int, int]]:
  """(kind, in_channels, out_channels) of `decoder.upsamples.{i}`.

  Every upsampler halves the channels, so each stage after the first starts from half
  of the previous width (the original hard-codes this for stages 1-3).
  """
  dims = [cfg.dim * u for u in (cfg.dim_mult[-1],) + cfg.dim_mult[::-1]]
  temperal_upsample = cfg.temperal_downsample[::-1]
  layers = []
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    if i > 0:
      cin //= 2
    for _ in range(cfg.num_res_blocks + 1):
      layers.append(("residual", cin, cout))
      cin = cout
    if i != len(cfg.dim_mult) - 1:
      layers.append(("upsample3d" if temperal_upsample[i] else "upsample2d", cout, cout // 2))
  return layers


def middle_dims(cfg: WanVAEConfig) -> tuple[int, int]:
  """Widths of the encoder and decoder middle blocks."""
  return cfg.dim * cfg.dim_mult[-1], cfg.dim * cfg.dim_mult[-1]


# ----------------------------------------------------------------------------- layers


def _precision(dtype):
  # Parity needs true fp32 convolutions; accelerators would otherwise use TF32/bf16 passes.
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def _conv_frames(x, kernel, padding, strides=(1, 1)):
  """2D convolution of every frame of x (B, T, H, W, C) with kernel (kh, kw, in, out)."""
  b, t = x.shape[:2]
  y = lax.conv_general_dilated(
      x.reshape((b * t,) + x.shape[2:]), kernel, strides, padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_precision(x.dtype))
  return y.reshape((b, t) + y.shape[1:])


_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class CausalConv3d(nn.Module):
  """Conv3d whose temporal padding is all in front (2 * padding[0] frames).

  `cache` holds the last inputs of the previous chunk (None = the first chunk, i.e.
  zeros); the call returns (y, new_cache) where new_cache are the last 2 * padding[0]
  frames of [cache, x], exactly what the original stores (for padding 0, None).
  The 3 temporal taps are computed as 3 per-frame 2D convolutions, which XLA runs
  faster than one 3D convolution on CPU.
  """
  features: int
  kernel_size: tuple[int, int, int]
  padding: tuple[int, int, int] = (0, 0, 0)
  stride_t: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cache=None):
    kt, kh, kw = self.kernel_size
    kernel = self.param("kernel", _kernel_init, (kt, kh, kw, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    spatial = ((self.padding[1],) * 2, (self.padding[2],) * 2)
    front = 2 * self.padding[0]
    if front and cache is None and x.shape[1] == 1 and self.stride_t == 1 and front == kt - 1:
      # First chunk of one frame: every earlier tap multiplies zero padding.
      y = _conv_frames(x, kernel[-1], spatial)
      new_cache = jnp.concatenate([jnp.zeros_like(x[:, :1]).repeat(front - 1, 1), x], 1)
      return y + bias.astype(self.dtype), new_cache
    if front:
      history = jnp.zeros((x.shape[0], front) + x.shape[2:], x.dtype) if cache is None else cache
      x = jnp.concatenate([history, x], 1)
      new_cache = x[:, -front:]
    else:
      new_cache = None
    t_out = (x.shape[1] - kt) // self.stride_t + 1
    if t_out < 1:
      raise ValueError(f"{self.name}: {x.shape[1]} frames are too few for a {kt}-tap conv")
    y = 0
    for k in range(kt):
      frames = lax.slice_in_dim(x, k, k + (t_out - 1) * self.stride_t + 1, self.stride_t, 1)
      y = y + _conv_frames(frames, kernel[k], spatial)
    return y + bias.astype(self.dtype), new_cache


class Conv2d(nn.Module):
  """Per-frame 2D convolution (the Resample convs) on (B, T, H, W, C)."""
  features: int
  padding: tuple[tuple[int, int], tuple[int, int]]
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _kernel_init, (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x = x.astype(self.dtype)
    return _conv_frames(x, kernel.astype(self.dtype), self.padding, self.strides) + bias.astype(
        self.dtype)


class RMSNorm(nn.Module):
  """The original's RMS_norm: L2-normalise over channels, times sqrt(C) * gamma.

  Not a mean-square RMSNorm: F.normalize divides by max(||x||, 1e-12). Always float32
  (autocast runs F.normalize in float32).
  """

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12) * (c ** 0.5) * gamma.astype(jnp.float32)


class ResidualBlock(nn.Module):
  """[norm, SiLU, conv3x3x3, norm, SiLU, conv3x3x3] + (1x1x1 shortcut if widths differ)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cache=None):
    conv = lambda name: CausalConv3d(self.features, (3, 3, 3), (1, 1, 1), dtype=self.dtype,
                                     name=name)
    if x.shape[-1] != self.features:
      h, _ = CausalConv3d(self.features, (1, 1, 1), dtype=self.dtype, name="shortcut")(x)
    else:
      h = x
    y = nn.silu(RMSNorm(name="norm1")(x))
    y, c1 = conv("conv1")(y, None if cache is None else cache["conv1"])
    y = nn.silu(RMSNorm(name="norm2")(y))
    y, c2 = conv("conv2")(y, None if cache is None else cache["conv2"])
    return y + h, {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions of each frame, plus the input."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    prec = _precision(self.dtype)
    y = RMSNorm(name="norm")(x).astype(self.dtype).reshape(b * t, h * w, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, precision=prec, name="to_qkv")(y)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, precision=prec) / np.sqrt(c).astype(np.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    y = jnp.einsum("nqk,nkc->nqc", probs, v, precision=prec)
    y = nn.Dense(c, dtype=self.dtype, precision=prec, name="proj")(y)
    return y.reshape(b, t, h, w, c) + x


class Resample(nn.Module):
  """down2d / down3d / up2d / up3d (spec 6.2), with the original's first-chunk rules.

  down3d, first chunk: frame passes through, cache := x[-1:]. Later: stride-2 time conv
  over [cache, x], cache := x[-1:].
  up3d, first chunk: time conv skipped (the original's 'Rep' marker), cache := zeros.
  Later: causal time conv to 2c channels, read as [a | b] and interleaved in time as
  a0, b0, a1, b1, ...; then the spatial x2 upsample as up2d.
  """
  mode: str
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cache=None):
    new_cache = None
    c = x.shape[-1]
    if self.mode == "upsample3d":
      if cache is None:
        new_cache = jnp.zeros((x.shape[0], 2) + x.shape[2:], self.dtype)
      else:
        time_conv = CausalConv3d(2 * c, (3, 1, 1), (1, 0, 0), dtype=self.dtype, name="time_conv")
        x, new_cache = time_conv(x, cache)
        b, t, h, w, _ = x.shape
        x = x.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    if self.mode.startswith("upsample"):
      x = x.repeat(2, axis=2).repeat(2, axis=3)  # nearest-exact x2 == pixel repetition
      x = Conv2d(self.features, ((1, 1), (1, 1)), dtype=self.dtype, name="resample")(x)
    else:
      x = Conv2d(self.features, ((0, 1), (0, 1)), (2, 2), dtype=self.dtype, name="resample")(x)
    if self.mode == "downsample3d":
      new_cache = x[:, -1:]
      if cache is not None:
        time_conv = CausalConv3d(c, (3, 1, 1), stride_t=2, dtype=self.dtype, name="time_conv")
        x, _ = time_conv(jnp.concatenate([cache, x], 1))
    return x, new_cache


def _run_stack(modules, x, cache):
  """Runs residual blocks and resamplers, with per-module caches keyed by module name."""
  new_cache = {}
  for module in modules:
    x, c = module(x, None if cache is None else cache.get(module.name))
    if c is not None:
      new_cache[module.name] = c
  return x, new_cache


class Encoder3d(nn.Module):
  cfg: WanVAEConfig

  @nn.compact
  def __call__(self, x, cache=None):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    get = lambda name: None if cache is None else cache[name]
    new = {}
    x, new["conv1"] = CausalConv3d(cfg.dim, (3, 3, 3), (1, 1, 1), dtype=dt, name="conv1")(
        x, get("conv1"))
    x, new["downsamples"] = _run_stack(
        [_make_layer(kind, cout, dt, f"downsamples_{i}")
         for i, (kind, _, cout) in enumerate(encoder_layout(cfg))], x, get("downsamples"))
    c = middle_dims(cfg)[0]
    x, new["middle_0"] = ResidualBlock(c, dtype=dt, name="middle_0")(x, get("middle_0"))
    x = AttentionBlock(dtype=dt, name="middle_1")(x)
    x, new["middle_2"] = ResidualBlock(c, dtype=dt, name="middle_2")(x, get("middle_2"))
    x = nn.silu(RMSNorm(name="head_norm")(x))
    x, new["head_conv"] = CausalConv3d(2 * cfg.z_dim, (3, 3, 3), (1, 1, 1), dtype=dt,
                                       name="head_conv")(x, get("head_conv"))
    return x, new


class Decoder3d(nn.Module):
  cfg: WanVAEConfig

  @nn.compact
  def __call__(self, x, cache=None):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    get = lambda name: None if cache is None else cache[name]
    new = {}
    c = middle_dims(cfg)[1]
    x, new["conv1"] = CausalConv3d(c, (3, 3, 3), (1, 1, 1), dtype=dt, name="conv1")(
        x, get("conv1"))
    x, new["middle_0"] = ResidualBlock(c, dtype=dt, name="middle_0")(x, get("middle_0"))
    x = AttentionBlock(dtype=dt, name="middle_1")(x)
    x, new["middle_2"] = ResidualBlock(c, dtype=dt, name="middle_2")(x, get("middle_2"))
    x, new["upsamples"] = _run_stack(
        [_make_layer(kind, cout, dt, f"upsamples_{i}")
         for i, (kind, _, cout) in enumerate(decoder_layout(cfg))], x, get("upsamples"))
    x = nn.silu(RMSNorm(name="head_norm")(x))
    x, new["head_conv"] = CausalConv3d(3, (3, 3, 3), (1, 1, 1), dtype=dt, name="head_conv")(
        x, get("head_conv"))
    return x, new


def _make_layer(kind, features, dtype, name):
  if kind == "residual":
    return ResidualBlock(features, dtype=dtype, name=name)
  return Resample(kind, features, dtype=dtype, name=name)


class WanVAE(nn.Module):
  """The original `WanVAE_`: encoder, conv1 (moments), conv2 (post-quant), decoder.

  `encode_chunk` / `decode_chunk` process one causal chunk; `cache=None` marks the first.
  """
  cfg: WanVAEConfig

  def setup(self):
    dt = jnp.dtype(self.cfg.dtype)
    z = self.cfg.z_dim
    self.encoder = Encoder3d(self.cfg)
    self.conv1 = CausalConv3d(2 * z, (1, 1, 1), dtype=dt)
    self.conv2 = CausalConv3d(z, (1, 1, 1), dtype=dt)
    self.decoder = Decoder3d(self.cfg)

  def encode_chunk(self, x, cache=None):
    """x (B, T, H, W, 3) -> (mu ‖ logvar (B, T', h, w, 2 z_dim), unnormalised; cache)."""
    h, cache = self.encoder(x, cache)
    return self.conv1(h)[0], cache

  def decode_chunk(self, z, cache=None):
    """Un-normalised latents (B, T', h, w, z_dim) -> (pixels, unclamped; cache)."""
    return self.decoder(self.conv2(z)[0], cache)

  def __call__(self, x, z):
    """Runs a first and a later chunk of both paths, so that `init` creates every param."""
    y, cache = self.encode_chunk(x[:, :1])
    self.encode_chunk(x[:, 1:], cache)
    d, cache = self.decode_chunk(z[:, :1])
    self.decode_chunk(z[:, 1:], cache)
    return y, d


def init_params(rng, cfg: WanVAEConfig):
  """Random parameters, for benchmarks and tests (real weights come from `loading`).

  The tree structure comes from tracing `WanVAE.init` (no compilation); the values are
  drawn with numpy (fan-in scaled normal kernels, zero biases, unit gammas), which is
  seconds instead of the minute a compiled `init` of the full VAE takes on CPU.
  """
  s = cfg.spatial_factor
  x = jax.ShapeDtypeStruct((1, 1 + ENCODE_CHUNK_FRAMES, s, s, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((1, 2, 1, 1, cfg.z_dim), jnp.float32)
  shapes = jax.eval_shape(WanVAE(cfg).init, rng, x, z)["params"]
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
  np_rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return np_rng.standard_normal(leaf.shape, np.float32) / np.float32(np.sqrt(fan_in))
    return np.ones(leaf.shape, np.float32) if name == "gamma" else np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# ----------------------------------------------------------------------------- drivers


def _scale(cfg):
  """(mean, 1/std) in the compute dtype, as the original wrapper builds `scale`."""
  dt = jnp.dtype(cfg.dtype)
  mean = jnp.asarray(cfg.latents_mean, dt)
  inv_std = (1.0 / jnp.asarray(cfg.latents_std, dt)).astype(dt)
  return mean, inv_std


def _encode_moments(params, x, cfg):
  """x (B, T, H, W, 3), T = 1 + 4k -> (mu normalised, logvar), both (B, T', h, w, z)."""
  model = WanVAE(cfg)
  variables = {"params": params}
  out, cache = model.apply(variables, x[:, :1], method=WanVAE.encode_chunk)
  b, t, h, w, c = x.shape
  if t > 1:
    n = (t - 1) // ENCODE_CHUNK_FRAMES
    chunks = x[:, 1:].reshape(b, n, ENCODE_CHUNK_FRAMES, h, w, c).swapaxes(0, 1)

    def step(cache, chunk):
      y, cache = model.apply(variables, chunk, cache, method=WanVAE.encode_chunk)
      return cache, y

    _, ys = lax.scan(step, cache, chunks)
    ys = ys.swapaxes(0, 1).reshape((b, -1) + ys.shape[3:])
    out = jnp.concatenate([out, ys], axis=1)
  mu, logvar = jnp.split(out, 2, axis=-1)
  mean, inv_std = _scale(cfg)
  mu = (mu.astype(mean.dtype) - mean) * inv_std
  return mu.astype(jnp.float32), logvar.astype(jnp.float32)


def _decode_frames(params, z, cfg):
  """Normalised latents (B, T', h, w, z) -> raw pixels (B, 1 + f (T' - 1), H, W, 3), float32."""
  model = WanVAE(cfg)
  variables = {"params": params}
  mean, inv_std = _scale(cfg)
  # Torch promotes float32 latents against bf16 constants to float32: do the same.
  dt = jnp.promote_types(z.dtype, mean.dtype)
  z = z.astype(dt) / inv_std.astype(dt) + mean.astype(dt)
  out, cache = model.apply(variables, z[:, :1], method=WanVAE.decode_chunk)
  if z.shape[1] > 1:

    def step(cache, frame):
      y, cache = model.apply(variables, frame[:, None], cache, method=WanVAE.decode_chunk)
      return cache, y

    _, ys = lax.scan(step, cache, z[:, 1:].swapaxes(0, 1))
    ys = ys.swapaxes(0, 1)
    ys = ys.reshape((ys.shape[0], -1) + ys.shape[3:])
    out = jnp.concatenate([out, ys], axis=1)
  return out.astype(jnp.float32)


_encode_moments_jit = jax.jit(_encode_moments, static_argnames="cfg")
_decode_frames_jit = jax.jit(_decode_frames, static_argnames="cfg")


# ----------------------------------------------------------------------------- public API


def _layout(channels_last, ndim):
  if ndim == 4:
    return "(B, H, W, C)" if channels_last else "(B, C, H, W)"
  return "(B, T, H, W, C)" if channels_last else "(B, C, T, H, W)"


def to_channels_last(x, channels_last, what):
  """Accepts (B, C, T, H, W) / (B, T, H, W, C), or 4D images; returns 5D channel-last."""
  x = jnp.asarray(x)
  if x.ndim == 4:
    x = x[:, None] if channels_last else x[:, :, None]
  elif x.ndim != 5:
    raise ValueError(f"{what}: expected a 5D video {_layout(channels_last, 5)} or a 4D image "
                     f"batch {_layout(channels_last, 4)}, got shape {tuple(x.shape)}")
  return x if channels_last else jnp.moveaxis(x, 1, -1)


def from_channels_last(y, channels_last, ndim):
  """Inverse of `to_channels_last` for an input that had `ndim` dimensions."""
  if ndim == 4:
    y = y[:, 0]
  return y if channels_last else jnp.moveaxis(y, -1, 1)


def check_video_shape(shape, cfg: WanVAEConfig, *, channels_last=False):
  """Raises ValueError unless a video/image batch of this shape can be encoded."""
  if len(shape) not in (4, 5):
    raise ValueError(f"encode: expected a 5D video {_layout(channels_last, 5)} or a 4D image "
                     f"batch {_layout(channels_last, 4)}, got shape {tuple(shape)}")
  b, t, h, w, c = _cl_shape(shape, channels_last)
  where = f"shape {tuple(shape)} read as {_layout(channels_last, len(shape))}"
  if c != 3:
    hint = "" if channels_last else "; pass channels_last=True for channel-last arrays"
    raise ValueError(f"encode: expected 3 colour channels, got {c} ({where}{hint})")
  if t < 1 or (t - 1) % ENCODE_CHUNK_FRAMES:
    raise ValueError(f"encode: the frame count must be 1 + {ENCODE_CHUNK_FRAMES}k "
                     f"(1, 5, 9, 13, 17, ...), got {t} ({where})")
  s = cfg.spatial_factor
  if h < s or w < s or h % s or w % s:
    raise ValueError(f"encode: height and width must be positive multiples of {s}, "
                     f"got {h}x{w} ({where})")


def check_latent_shape(shape, cfg: WanVAEConfig, *, channels_last=False):
  """Raises ValueError unless latents of this shape can be decoded."""
  if len(shape) not in (4, 5):
    raise ValueError(f"decode: expected 5D latents {_layout(channels_last, 5)} or 4D "
                     f"{_layout(channels_last, 4)}, got shape {tuple(shape)}")
  b, t, h, w, c = _cl_shape(shape, channels_last)
  where = f"shape {tuple(shape)} read as {_layout(channels_last, len(shape))}"
  if c != cfg.z_dim:
    raise ValueError(f"decode: expected {cfg.z_dim} latent channels, got {c} ({where})")
  if min(b, t, h, w) < 1:
    raise ValueError(f"decode: empty latents ({where})")


def _cl_shape(shape, channels_last):
  """A 4D/5D shape in the caller's layout -> (B, T, H, W, C)."""
  shape = tuple(shape)
  if len(shape) == 4:
    shape = shape[:1] + (1,) + shape[1:] if channels_last else shape[:2] + (1,) + shape[2:]
  return shape if channels_last else shape[:1] + shape[2:] + shape[1:2]


def encode_posterior(params, video, cfg: WanVAEConfig, *, channels_last=False):
  """Encodes pixels in [-1, 1] -> (mu normalised with mean/std, logvar), float32.

  video: (B, 3, T, H, W) (or (B, 3, H, W) images; channel-last with channels_last=True),
  T = 1 + 4k, H and W multiples of 8. Outputs have T' = 1 + k latent frames.
  """
  check_video_shape(jnp.shape(video), cfg, channels_last=channels_last)
  x = to_channels_last(video, channels_last, "encode")
  mu, logvar = _encode_moments_jit(params, x, cfg)
  nd = jnp.ndim(video)
  return from_channels_last(mu, channels_last, nd), from_channels_last(logvar, channels_last, nd)


def sample_posterior(mu, logvar, rng):
  """The original's `sample`: mu_n + exp(0.5 * clip(logvar, -30, 20)) * eps.

  [quirk, spec 6.6] the noise std is the un-normalised posterior's, added to the
  normalised mean. Kept for parity with Show-o2 training and MMU inference.
  """
  std = jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0))
  return mu + std * jax.random.normal(rng, mu.shape, mu.dtype)


def encode_latents(params, video, cfg: WanVAEConfig, rng=None, *, channels_last=False):
  """Normalised latents: mu_n if rng is None (deterministic), else a posterior sample."""
  mu, logvar = encode_posterior(params, video, cfg, channels_last=channels_last)
  return mu if rng is None else sample_posterior(mu, logvar, rng)


def decode_video(params, latents, cfg: WanVAEConfig, *, clamp=True, channels_last=False):
  """Normalised latents (B, z, T', h, w) (or (B, z, h, w)) -> pixels, float32.

  Decodes one latent frame at a time as the original: 1 + 4 (T' - 1) output frames.
  clamp=True clips to [-1, 1] as the wrapper's `batch_decode`; clamp=False is the raw
  `WanVAE_.decode` output (what the golden fixture stores).
  """
  check_latent_shape(jnp.shape(latents), cfg, channels_last=channels_last)
  z = to_channels_last(latents, channels_last, "decode")
  y = _decode_frames_jit(params, z, cfg)
  if clamp:  # outside the jitted program, so both settings share one compilation
    y = jnp.clip(y, -1.0, 1.0)
  return from_channels_last(y, channels_last, jnp.ndim(latents))
