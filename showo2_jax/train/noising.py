"""Per-image flow-matching inputs of a training batch (spec 4.6, 5.2, 7.1 step 2).

The original loops over images in Python, drawing t and noise from the global
torch RNG. Here one pure function does the whole batch from a key, so it lives
inside the jitted step and its draws do not depend on how the batch is sharded
(jax's partitionable threefry): 8 devices or 2 hosts see the same numbers as 1.

Conventions (transport.py): t = 1 is clean, t = 0 is noise; x_t = t x1 + (1-t) x0;
target u_t = x1 - x0.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from showo2_jax.models import omni_mask
from showo2_jax.flow import transport


class FlowInputs(NamedTuple):
  x_t: jax.Array          # (B*M, C, ...) noised latents, slot order k = i*M + j
  t: jax.Array            # (B*M,) float32 (t = 1 for clean images)
  u_t: jax.Array          # (B*M, C, ...) target velocity
  image_masks: jax.Array  # (B, L) flow-loss mask before the time slots are removed


def noise_batch(rng: jax.Array, latents: jax.Array, modality_positions: jax.Array,
                image_masks: jax.Array, is_und: jax.Array, *, und_max_t0: float = 1.0,
                shift_mu: Optional[float] = None, clean_context_prob: float = 0.0) -> FlowInputs:
  """Draws t and noise for every image slot and derives the flow mask.

  latents (B, M, C, [T,] H, W) clean; is_und (B,) marks understanding rows, whose
  images use t0 = und_max_t0 (the lower bound of t). With und_max_t0 == 1 they are
  clean and their rows leave the flow loss, as the training scripts do.

  Slots whose block has no flow-mask position (`image_masks` 0 over a present
  block: the source image of `sequences.edit_row`) are clean context: x_t = x1,
  t = 1, and they stay out of the loss.

  clean_context_prob > 0 (interleaved data, spec 4.6): with that probability per
  row, the first idx ~ U{1..last present slot} images become clean context
  (x_t = x1, t = 1) and their blocks leave the flow mask; the last present image
  is always noised. Rows whose only image is slot 0 are never changed.
  """
  b, m = latents.shape[:2]
  x1 = latents.reshape((b * m,) + latents.shape[2:]).astype(jnp.float32)
  r_t, r_noise, r_ctx, r_idx = jax.random.split(rng, 4)
  is_und = is_und.astype(bool)
  t0 = jnp.repeat(jnp.where(is_und, jnp.float32(und_max_t0), 0.0), m)
  t = transport.sample_train_t(r_t, b * m, t0=t0, shift_mu=shift_mu)
  x0 = jax.random.normal(r_noise, x1.shape, jnp.float32)
  x_t = transport.interpolate(x1, x0, t)
  u_t = transport.target_velocity(x1, x0)
  masks = image_masks
  if und_max_t0 == 1.0:
    masks = jnp.where(is_und[:, None], 0, masks)
  l = image_masks.shape[1]
  inside = omni_mask.block_membership(
      modality_positions, jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l)))  # (B, M, L)
  context = (modality_positions[..., 1] > 0) & ~jnp.any(inside & (image_masks[:, None, :] > 0),
                                                         axis=2)
  flat_ctx = context.reshape(b * m)
  x_t = jnp.where(flat_ctx.reshape((b * m,) + (1,) * (x1.ndim - 1)), x1, x_t)
  t = jnp.where(flat_ctx, 1.0, t)
  if clean_context_prob > 0:
    clean = clean_context_slots(r_ctx, r_idx, modality_positions, clean_context_prob)
    flat = clean.reshape(b * m)
    x_t = jnp.where(flat.reshape((b * m,) + (1,) * (x1.ndim - 1)), x1, x_t)
    t = jnp.where(flat, 1.0, t)
    l = image_masks.shape[1]
    positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    inside = omni_mask.block_membership(modality_positions, positions)   # (B, M, L)
    masks = jnp.where(jnp.any(inside & clean[:, :, None], axis=1), 0, masks)
  return FlowInputs(x_t, t, u_t, masks)


def clean_context_slots(r_coin: jax.Array, r_idx: jax.Array, modality_positions: jax.Array,
                        prob: float) -> jax.Array:
  """(B, M) bool: slots made clean context (the first idx of a chosen row)."""
  b, m = modality_positions.shape[:2]
  present = modality_positions[..., 1] > 0
  slot = jnp.arange(m, dtype=jnp.int32)[None]
  last = jnp.max(jnp.where(present, slot, 0), axis=1)                  # (B,)
  # random.randint(1, last) is inclusive; jax's maxval is exclusive.
  idx = jax.random.randint(r_idx, (b,), 1, jnp.maximum(last, 1) + 1)
  idx = jnp.where(last > 0, idx, 0)
  chosen = jax.random.uniform(r_coin, (b,)) < prob
  idx = jnp.where(chosen, idx, 0)
  return slot < idx[:, None]
