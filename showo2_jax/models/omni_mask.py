"""Omni-attention and per-position slot bookkeeping, as arithmetic on positions.

Everything here is derived from `modality_positions` (B, M, 2) = (offset, length)
per visual block (length counts the time slot; (0, 0) = empty slot), with fixed
shapes and no Python loop over rows or slots (spec 3 and 10.20).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def block_membership(modality_positions: jax.Array, positions: jax.Array) -> jax.Array:
  """(B, M, L) bool: position positions[b, l] lies inside slot m's block [o, o+n)."""
  o = modality_positions[..., 0][:, :, None]
  n = modality_positions[..., 1][:, :, None]
  p = positions[:, None, :]
  return (p >= o) & (p < o + n)


def omni_attention_mask(modality_positions: jax.Array, seq_len: int,
                        q_positions: jax.Array | None = None, kv_len: int | None = None) -> jax.Array:
  """(B, Lq, Lk) bool allow-matrix: causal, plus full attention inside each block.

  allow[q, k] = k <= q  or  (q and k in the same visual block). Query positions
  default to 0..seq_len-1 and key positions to 0..kv_len-1 (kv_len defaults to
  seq_len), so the same function serves full sequences and cached windows.
  """
  b = modality_positions.shape[0]
  if q_positions is None:
    q_positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (b, seq_len))
  kv_len = seq_len if kv_len is None else kv_len
  k_positions = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32), (b, kv_len))
  causal = k_positions[:, None, :] <= q_positions[:, :, None]
  q_in = block_membership(modality_positions, q_positions)
  k_in = block_membership(modality_positions, k_positions)
  # Any slot holding both q and k: an and-or over the few slots. (An int einsum over
  # M here cost ~8% of a small-config train step on CPU: XLA recomputed it per layer.)
  same_block = jnp.any(q_in[:, :, :, None] & k_in[:, :, None, :], axis=1)
  return causal | same_block


def last_covering_slot(covers: jax.Array) -> jax.Array:
  """(B, M, L) bool -> (B, L) index of the last slot that covers each position, or -1.

  "Last" reproduces the original's sequential writes, where a later slot
  overwrites an earlier one.
  """
  m = covers.shape[1]
  idx = jnp.arange(m, dtype=jnp.int32)[None, :, None]
  return jnp.max(jnp.where(covers, idx, -1), axis=1)


def modulation_slot_index(modality_positions: jax.Array, positions: jax.Array) -> jax.Array:
  """(B, L) slot whose adaLN modulation applies at each position (-1 = identity)."""
  return last_covering_slot(block_membership(modality_positions, positions))


def scatter_slot_index(modality_positions: jax.Array, positions: jax.Array,
                       empty_slots_overwrite_offset: bool = True) -> jax.Array:
  """(B, L) slot whose visual tokens are written at each position (-1 = text).

  With `empty_slots_overwrite_offset` (the original's behaviour, spec 10.4) an
  empty (0, 0) slot still writes its time token at its offset, i.e. position 0.
  """
  covers = block_membership(modality_positions, positions)
  if empty_slots_overwrite_offset:
    o = modality_positions[..., 0][:, :, None]
    covers = covers | (positions[:, None, :] == o)
  return last_covering_slot(covers)
