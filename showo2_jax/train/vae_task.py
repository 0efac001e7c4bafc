"""Training a Wan2.1-architecture VAE (`config.train.task = "wan_vae"`).

Show-o2 uses a frozen, pre-trained Wan2.1 VAE. When its weights cannot be had
(the embedded `tiny_shapes` run downloads nothing) a small VAE of the same
architecture (`vae/wan.py`, any `dim`/`dim_mult`/`z_dim`) is trained here, in
the same loop, with the same checkpoints and logs as every other phase.

Objective, per image (Wan2.1 is trained with L1 reconstruction + KL, plus
LPIPS and a GAN loss that a few-minute CPU run leaves out):
  loss = mean |x - decode(z)| + mse_weight * mean (x - decode(z))^2
         + kl_weight * mean KL(q(z|x) || N(0, I)),
  z = mu + exp(logvar / 2) eps,
all in the VAE's raw (un-normalised) latent space. Images go through the
encoder's first causal chunk (a single frame), exactly what encoding an image
does at inference. After training, `latent_stats` measures the per-channel
mean and std of the posterior means over the data, which become the config's
`latents_mean` / `latents_std` (Wan2.1's constants were measured the same way).

Batches: the Grain image-text pipeline's `pixel_values` (B, M, 3, R, R) in
[-1, 1] (the text fields are ignored).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.vae import wan

log = logging.getLogger(__name__)


def vae_config(config) -> wan.WanVAEConfig:
  """The VAE being trained, in float32 (its compute dtype while training)."""
  return dataclasses.replace(wan.WanVAEConfig.from_config_dict(config.vae), dtype="float32")


class VaeObjective:
  """(params, batch, rng) -> (loss, metrics)."""
  reads_pixels = True   # the step passes pixel_values through (no frozen VAE encode)

  def __init__(self, cfg: wan.WanVAEConfig, kl_weight: float, mse_weight: float = 0.0):
    self.cfg, self.kl_weight, self.mse_weight = cfg, float(kl_weight), float(mse_weight)
    self.model = wan.WanVAE(cfg)

  def __call__(self, params, batch, rng):
    x = batch["pixel_values"].astype(jnp.float32)
    x = x.reshape((-1,) + x.shape[-3:])                    # (K, 3, R, R)
    x = jnp.moveaxis(x, 1, -1)[:, None]                    # (K, 1, R, R, 3) channel-last
    v = {"params": params}
    moments, _ = self.model.apply(v, x, method=wan.WanVAE.encode_chunk)
    mu, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, jnp.float32)
    y, _ = self.model.apply(v, z, method=wan.WanVAE.decode_chunk)
    err = y.astype(jnp.float32) - x
    rec = jnp.mean(jnp.abs(err))
    mse = jnp.mean(jnp.square(err))
    kl = 0.5 * jnp.mean(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    loss = rec + self.mse_weight * mse + self.kl_weight * kl
    return loss, {"loss": loss, "rec_loss": rec, "mse_loss": mse, "kl_loss": kl}


def init_fn(cfg: wan.WanVAEConfig):
  s = cfg.spatial_factor
  x = jnp.zeros((1, 1 + wan.ENCODE_CHUNK_FRAMES, s, s, 3), jnp.float32)
  z = jnp.zeros((1, 2, 1, 1, cfg.z_dim), jnp.float32)
  return lambda rng: wan.WanVAE(cfg).init(rng, x, z)["params"]


def vae_task(config, labels_fn):
  from showo2_jax.train import data as data_lib  # pylint: disable=import-outside-toplevel
  from showo2_jax.train.tasks import Task  # pylint: disable=import-outside-toplevel
  cfg = vae_config(config)
  r = int(config.resolution)
  if r % cfg.spatial_factor:
    raise ValueError(f"resolution {r} is not a multiple of the VAE's stride {cfg.spatial_factor}")
  return Task(name="wan_vae", model_config=cfg, init_params=init_fn(cfg),
              objective=VaeObjective(cfg, config.train.get("kl_weight", 1e-6),
                                       config.train.get("mse_weight", 0.0)),
              labels=labels_fn, make_iterator=lambda mesh: data_lib.make_iterator(config, mesh),
              tokens_per_row=(r // cfg.spatial_factor) ** 2)


def latent_stats(params, cfg: wan.WanVAEConfig, pixels: np.ndarray, batch_size: int = 64):
  """Per-channel (mean, std) of the raw posterior means of `pixels` (N, 3, R, R)."""
  raw = dataclasses.replace(cfg, latents_mean=(0.0,) * cfg.z_dim, latents_std=(1.0,) * cfg.z_dim)
  mus = []
  for i in range(0, len(pixels), batch_size):
    chunk = pixels[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:  # one compiled shape
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    mu, _ = wan.encode_posterior(params, chunk, raw)
    mus.append(np.asarray(mu)[:n])
  mu = np.concatenate(mus)                                  # (N, C, h, w)
  mean = mu.mean(axis=(0, 2, 3))
  std = mu.std(axis=(0, 2, 3))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def host_params(params) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(params))
