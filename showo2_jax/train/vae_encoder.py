"""Pixels -> latents inside the train step with the frozen Wan2.1 VAE (spec 7.1 step 1, 6.6).

The original encodes every step's `pixel_values` with `vae.sample` under bf16
autocast: the normalised posterior mean plus `exp(0.5 * clamp(logvar, -30, 20))
* eps` (the un-normalised std on the normalised mean, kept on purpose: released
weights were trained with it). We do the same inside the jitted step, so the
encode is part of one XLA program, is sharded like the batch, and draws eps from
jax's partitionable threefry (same numbers on 1 device, 8 devices or 2 hosts).

Precomputed latents (`showo2-jax precompute-latents`) remain the fast path and
the recommended one: the encoder costs ~0.45 TFLOP per 432-px image in every
step (and the host must decode and ship 12x the bytes), while its output only
changes through eps. Records precomputed with their
`latents_logvar` keep the original's per-step sampling without the VAE
(`prepare_visuals` draws eps from the same stream); `--deterministic` ones are
used as stored.

Where the VAE lives: its params are a separate, replicated argument of the step,
not part of the TrainState. So it gets no gradient (it is not an argument of the
differentiated function), no optimizer state, and is not written to every
checkpoint: it is frozen and reloadable from `config.vae_checkpoint`, which a
resumed run reads again (a `random` VAE is re-drawn from `config.seed`).
Only the encoder half is kept (`ENCODER_PARAMS`: 53.6M of the full Wan2.1 VAE's
127M params, 0.21 GB fp32); the decoder is never used in training. Replicated
rather than sharded because that is small next to the model's state, and fp32
because autocast keeps fp32 weights too (the RMS-norm gammas are used in fp32).

Randomness: the VAE's eps comes from `vae_rng(step_rng)`, its own stream. It is
`fold_in` with a large constant on purpose: with partitionable threefry
`fold_in(k, d) == split(k, n)[d]`, so a small `d` would reuse one of the keys the
objective splits off for t and the flow noise (eps would equal x0).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from showo2_jax import paths, sharding
from showo2_jax.convert import orbax_io
from showo2_jax.vae import wan

log = logging.getLogger(__name__)

# 'VAE\0': far above any split count, so no objective key can alias it (see above).
VAE_STREAM = 0x56414500
RANDOM = "random"
# The top-level VAE params that `encode_posterior` reads (encoder + moments conv).
ENCODER_PARAMS = ("encoder", "conv1")


def vae_rng(step_rng: jax.Array) -> jax.Array:
  """The key of the VAE's posterior sample in the step whose key is `step_rng`."""
  return jax.random.fold_in(step_rng, VAE_STREAM)


def vae_config(config) -> wan.WanVAEConfig:
  """The run's VAE: architecture from `config.vae`, compute dtype from `config.vae_dtype`."""
  if not config.get("vae") or "z_dim" not in config.vae:
    raise ValueError("config.vae (the Wan VAE architecture, configs/models.py wan_vae()) is empty")
  dtype = config.get("vae_dtype", "bfloat16") or "float32"
  cfg = wan.WanVAEConfig.from_config_dict(config.vae, dtype=dtype)
  m = config.get("model")
  if m is not None and "latent_channels" in m and cfg.z_dim != int(m.latent_channels):
    raise ValueError(f"the VAE has z_dim {cfg.z_dim} but the model reads {m.latent_channels} "
                     "latent channels")
  return cfg


def uses_vae(config) -> bool:
  return bool(config.get("vae_checkpoint", ""))


@dataclasses.dataclass(frozen=True)
class VaeEncoder:
  """pixels (N, 3, [F,] H, W) in [-1, 1] -> sampled normalised latents (N, C, [F',] h, w).

  Hashable (a frozen config), so a jitted step can close over it."""
  cfg: wan.WanVAEConfig

  def __call__(self, params, pixels: jax.Array, rng: jax.Array) -> jax.Array:
    mu, logvar = wan.encode_posterior(params, pixels.astype(jnp.float32), self.cfg)
    return wan.sample_posterior(mu, logvar, rng)


def _batch_constraint(x: jax.Array) -> jax.Array:
  """Keep the images on the batch shards (the VAE's convs have no logical names)."""
  return nn.with_logical_constraint(x, ("activation_batch",) + (None,) * (x.ndim - 1))


def prepare_visuals(batch: Mapping[str, jax.Array], rng: jax.Array,
                    encoder: Optional[VaeEncoder] = None, vae_params: Any = None) -> dict:
  """The batch the objective reads: clean `latents`, drawn as the original draws them.

  - `pixel_values` (no latents): VAE encode + posterior sample (needs `encoder`);
  - `latents` + `latents_logvar` (precomputed): the same sample without the VAE;
  - `latents` alone: used as they are.
  Images keep their leading (B, M) (or (B,)) axes. `rng` is `vae_rng(step key)`
  (one microbatch's share of it under gradient accumulation). The result carries
  no gradient: the VAE is frozen and its output is data.
  """
  out = dict(batch)
  lead = 2 if "modality_positions" in out else 1          # (B, M, ...) slots or (B, ...)
  if "latents" in out:
    out.pop("pixel_values", None)
    logvar = out.pop("latents_logvar", None)
    if logvar is not None:
      latents = out["latents"].astype(jnp.float32)
      out["latents"] = wan.sample_posterior(latents, logvar.astype(jnp.float32), rng)
    return out
  if "pixel_values" not in out:
    return out
  if encoder is None:
    raise ValueError("the batch carries pixel_values but the step has no VAE "
                     "(set config.vae_checkpoint, or train from precomputed latents)")
  pixels = out.pop("pixel_values")
  shape = pixels.shape
  flat = _batch_constraint(pixels.reshape((-1,) + shape[lead:]))
  z = _batch_constraint(encoder(vae_params, flat, rng))
  out["latents"] = jax.lax.stop_gradient(z.reshape(shape[:lead] + z.shape[1:]))
  return out


# ----------------------------------------------------------------------------- params


def abstract_params(cfg: wan.WanVAEConfig, mesh: Mesh):
  """ShapeDtypeStructs of the encoder's params, replicated on `mesh`."""
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=rep),
                      _param_shapes(dataclasses.replace(cfg, dtype="float32")))


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg: wan.WanVAEConfig):
  """Traces the whole VAE's init once per config (a second or more for the full one)."""
  s = cfg.spatial_factor
  x = jax.ShapeDtypeStruct((1, 1 + wan.ENCODE_CHUNK_FRAMES, s, s, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((1, 2, 1, 1, cfg.z_dim), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)     # shapes only: nothing runs on any device
  return encoder_half(jax.eval_shape(wan.WanVAE(cfg).init, key, x, z)["params"])


def encoder_half(params) -> dict:
  """The params the encode reads; the decoder's stay on the host, then go."""
  return {k: params[k] for k in ENCODER_PARAMS}


def load_params(config, mesh: Mesh):
  """(VaeEncoder, its encoder params replicated on `mesh`) from `config.vae_checkpoint`:

  `random` (fresh weights from `config.seed`, for tests and demos), an Orbax
  `wan_vae` checkpoint dir (`showo2-jax convert`), or what `vae.loading` reads:
  `Wan2.1_VAE.pth`, `.safetensors` (original or diffusers keys) or a directory
  holding one. The architecture is the run's `config.vae`; loading is strict, so
  a checkpoint of another shape fails with the offending keys. Every process
  reads the whole (small) file.
  """
  from showo2_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  cfg = vae_config(config)
  path = config.get("vae_checkpoint", "")
  abstract = abstract_params(cfg, mesh)
  if not path:
    raise ValueError("config.vae_checkpoint is empty")
  if path == RANDOM:
    host = wan.init_params(jax.random.PRNGKey(int(config.seed)), cfg)
    source = f"random init (seed {int(config.seed)})"
  elif not paths.exists(path):
    raise FileNotFoundError(f"config.vae_checkpoint not found: '{path}'")
  elif orbax_io.is_orbax_dir(path):
    host = _restore_orbax(path, cfg)
    source = path
  else:
    from showo2_jax.convert import loading  # pylint: disable=import-outside-toplevel
    host = loading.load_wan_vae_params(path, dataclasses.replace(cfg, dtype="float32"))
    source = path
  params = state_lib.place(encoder_half(host), abstract)
  count = sum(int(a.size) for a in jax.tree.leaves(params))
  log.info("VAE: %s, encoder %.1fM params (frozen, replicated), compute dtype %s", source,
           count / 1e6, cfg.dtype)
  return VaeEncoder(cfg), params


def _restore_orbax(path: str, cfg: wan.WanVAEConfig):
  try:
    _, stored_cfg, params = orbax_io.restore_params(path, kind="wan_vae")
  except orbax_io.OrbaxCheckpointError as e:
    raise ValueError(f"config.vae_checkpoint {e}") from None
  check_same_vae(stored_cfg, cfg, path)
  return params


def check_same_vae(stored: wan.WanVAEConfig, cfg: wan.WanVAEConfig, path: str) -> None:
  """The checkpoint's VAE must be the run's: same architecture, same latent
  normalisation (up to the float32 rounding a config.json round trip adds)."""
  stats = ("latents_mean", "latents_std")
  arch = lambda c: {f.name: getattr(c, f.name) for f in dataclasses.fields(c)
                    if f.name not in stats + ("dtype",)}
  same_stats = all(np.allclose(getattr(stored, k), getattr(cfg, k), rtol=1e-6, atol=0)
                   for k in stats)
  if arch(stored) != arch(cfg) or not same_stats:
    raise ValueError(f"config.vae_checkpoint {path} holds the VAE {stored}, but the run's "
                     f"config.vae is {cfg}")
