"""Precomputing a dataset's VAE latents once (the job behind `showo2-jax precompute-latents`).

Reads records (`data.build.load_records`), decodes and transforms their media as
training would (`data.tasks.pixel_loader`), encodes them (`wan_encoder`, or the
VAE-free `pool_encoder` for dry runs; `with_teacher` adds SigLIP features for
semantic-layer distillation) and writes ArrayRecord shards
(`data.precompute.precompute_latents`). The CLI (`cli/precompute.py`) and the
`tiny_shapes` recipe (`shapes/recipe.py`) both run `precompute`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)


def precompute(config, *, kind: str, data: str, out: str, source: str = "files",
               media_root: Optional[str] = None, encoder: str = "wan",
               vae_weights: Optional[str] = None, random_vae: bool = False,
               teacher: Optional[str] = None, teacher_layer: int = -1,
               deterministic: bool = False, resolution: Optional[int] = None,
               min_res: Optional[Sequence[int]] = None, num_frames: int = 17,
               batch_size: int = 16, records_per_shard: int = 2048,
               num_shards: Optional[int] = None, threads: int = 4,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               seed: int = 0, progress: bool = True):
  """Encodes the `kind` records of `data` into shards under `out`; returns the
  `data.precompute` result (records, shards written and skipped). `config` is a
  loaded ml_collections config (resolution, VAE); the other arguments are the
  `precompute-latents` flags of the same names."""
  from showo2_jax.data import build, tasks  # pylint: disable=g-import-not-at-top
  from showo2_jax.data import precompute as precompute_lib  # pylint: disable=g-import-not-at-top
  resolution = resolution or config.resolution
  log.info("precompute-latents: %s px, encoder %s%s", resolution, encoder,
           " (RANDOM weights: dry run)" if random_vae else "")
  records = build.load_records(kind, source, data, media_root)
  load = tasks.pixel_loader(kind, resolution, min_res=min_res, num_frames=num_frames)
  encode = pool_encoder if encoder == "pool" else wan_encoder(
      config, vae_weights, deterministic=deterministic, seed=seed)
  if teacher:
    encode = with_teacher(encode, teacher, teacher_layer)
  return precompute_lib.precompute_latents(
      precompute_lib.with_pixels(records, load), encode, out, batch_size=batch_size,
      num_shards=num_shards, records_per_shard=records_per_shard,
      process_index=process_index, process_count=process_count,
      read_threads=threads, progress=progress)


def summary(result, out: str) -> str:
  return (f"wrote {result.num_records} records to {len(result.shards_written)} shards in {out} "
          f"({len(result.shards_skipped)} shards already done, {result.num_skipped} records skipped)")


def with_teacher(encode, siglip_dir: str, layer: int = -1):
  """encode_fn that adds `latents_teacher`: SigLIP pixel-tower features of each image."""
  from showo2_jax.convert import hf  # pylint: disable=g-import-not-at-top
  from showo2_jax.models import siglip_vision  # pylint: disable=g-import-not-at-top
  teacher = siglip_vision.teacher_encoder(*hf.load_siglip_vision(siglip_dir), layer)

  def both(pixels):
    out = encode(pixels)
    out = dict(out) if isinstance(out, dict) else {"latents": out}
    out["latents_teacher"] = teacher(pixels)
    return out
  return both


def pool_encoder(pixels: np.ndarray, stride: int = 8, channels: int = 16) -> np.ndarray:
  """(B, 3, [F,] H, W) -> (B, 16, [F',] H/8, W/8): a cheap deterministic stand-in for the VAE."""
  if pixels.ndim == 5:  # video: keep frames 0, 4, 8, ... like the 4x temporal compression
    pixels = pixels[:, :, ::4]
  *lead, h, w = pixels.shape
  pooled = pixels.reshape(*lead, h // stride, stride, w // stride, stride).mean(axis=(-3, -1))
  return np.concatenate([pooled] * (-(-channels // 3)), axis=1)[:, :channels]


def wan_encoder(cfg, weights: Optional[str], *, deterministic: bool, seed: int = 0):
  """pixels -> {"latents": normalised posterior mean, "latents_logvar"} with the Wan VAE."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from showo2_jax.convert import loading, orbax_io  # pylint: disable=g-import-not-at-top
  from showo2_jax.vae import wan  # pylint: disable=g-import-not-at-top
  if weights and orbax_io.is_orbax_dir(weights):
    # An Orbax wan_vae checkpoint carries its own architecture and latent statistics.
    _, vae_cfg, params = orbax_io.restore_params(weights, kind="wan_vae")
    vae_cfg = dataclasses.replace(vae_cfg, dtype="float32")
    params = jax.tree.map(jnp.asarray, params)
  else:
    vae_cfg = wan.WanVAEConfig.from_config_dict(cfg.vae)
    params = (loading.load_wan_vae_params(weights, vae_cfg) if weights
              else wan.init_params(jax.random.PRNGKey(seed), vae_cfg))

  def encode(pixels):
    mu, logvar = wan.encode_posterior(params, pixels, vae_cfg)
    out = {"latents": np.asarray(mu)}
    if not deterministic:
      out["latents_logvar"] = np.asarray(logvar)
    return out
  return encode
