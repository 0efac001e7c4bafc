"""Left-aligned prefixes and their KV caches: the shared core of every cached sampler.

A preallocated KV cache is written at one index for the whole batch, but the rows
of a batch have prompts of different lengths. So each row is shifted right
(left-padded) until its prefix ends on a common cache slot P: position p of row i
lives in slot p + shift[i]. RoPE is given the true positions and the pad slots are
masked out of every attention, so each row computes exactly what it would alone
(a masked logit contributes exp(finfo.min - max) = 0 to the softmax).

Everything after P (the visual block being denoised, or the generated tokens)
is written at the same slots for every row, which is what makes one cache index
per step possible.

Host-side layout is numpy (`align`); device-side functions take the model as a
static argument and are meant to be called inside `jax.jit`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import omni_mask
from showo2_jax.models.qwen2 import init_kv_cache
from showo2_jax.models.showo2 import Showo2, to_dtype


@dataclasses.dataclass
class AlignedPrefix:
  """A batch of prefixes left-padded to a common end (host numpy arrays).

  tokens:    (B, P) int32, pad slots hold `pad_id`.
  shift:     (B,) int32, pad slots before the row's position 0.
  lengths:   (B,) int32, real prefix tokens (= the true position of slot P).
  placement: (B, M, 2) where visual tokens are written, in slot space.
  attention: (B, M, 2) bidirectional blocks of the omni mask, in slot space
             (differs from `placement` only in the MMU parity mode).
  """
  tokens: np.ndarray
  shift: np.ndarray
  lengths: np.ndarray
  placement: np.ndarray
  attention: np.ndarray

  @property
  def width(self) -> int:
    return self.tokens.shape[1]


def bucket(n: int, multiple: int) -> int:
  """n rounded up to a multiple: prompts of similar length share one compilation."""
  return -(-n // multiple) * multiple if multiple else n


def _to_slots(positions: np.ndarray, shift: np.ndarray) -> np.ndarray:
  """(offset, length) per slot -> slot space; empty (0, 0) slots stay empty."""
  out = np.array(positions, np.int32, copy=True)
  real = out[..., 1] > 0
  out[..., 0] = np.where(real, out[..., 0] + shift[:, None], 0)
  return out


def align(rows: Sequence[Sequence[int]], pad_id: int, *, placement=None, attention=None,
          multiple: int = 16, width: Optional[int] = None) -> AlignedPrefix:
  """Left-pads token lists to a common width (a multiple of `multiple`).

  placement / attention: (B, M, 2) (offset, length) in each row's own positions
  (None: one empty slot). attention defaults to placement.
  """
  lengths = np.asarray([len(r) for r in rows], np.int32)
  if width is None:
    width = bucket(int(lengths.max()), multiple)
  if lengths.max() > width:
    raise ValueError(f"prefix of {lengths.max()} tokens does not fit width {width}")
  shift = (width - lengths).astype(np.int32)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, shift[i]:] = np.asarray(r, np.int32)
  if placement is None:
    placement = np.zeros((len(rows), 1, 2), np.int32)
  placement = np.asarray(placement, np.int32)
  attention = placement if attention is None else np.asarray(attention, np.int32)
  return AlignedPrefix(tokens, shift, lengths, _to_slots(placement, shift), _to_slots(attention, shift))


# ------------------------------------------------------------------------------ masks

def slot_positions(shift: jax.Array, start: int, length: int) -> jax.Array:
  """(B, length) true positions of slots [start, start + length); pads clip to 0."""
  slots = start + jnp.arange(length, dtype=jnp.int32)
  return jnp.maximum(slots[None] - shift[:, None], 0)


def prefix_mask(shift: jax.Array, attention: jax.Array, length: int, kv_len: int) -> jax.Array:
  """(B, length, kv_len) allow-mask for prefilling slots [0, length).

  The omni mask in slot space (causal plus each visual block), minus the pad
  keys. Pad queries see themselves only, so no softmax row is empty.
  """
  allow = omni_mask.omni_attention_mask(attention, length, kv_len=kv_len)
  k = jnp.arange(kv_len, dtype=jnp.int32)
  real_key = k[None, None, :] >= shift[:, None, None]
  self_key = k[None, None, :] == jnp.arange(length, dtype=jnp.int32)[None, :, None]
  return (allow & real_key) | self_key


def window_mask(shift: jax.Array, start: int, length: int, kv_len: int,
                bidirectional: bool) -> jax.Array:
  """(B, length, kv_len) mask for queries at slots [start, start + length).

  Causal over the cache (generated tokens), or, with `bidirectional`, every slot
  up to the window's end (a visual block sees all of itself), minus pad keys.
  """
  k = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
  q = start + jnp.arange(length, dtype=jnp.int32)[None, :, None]
  seen = k < start + length if bidirectional else k <= q
  return seen & (k >= shift[:, None, None])


# ----------------------------------------------------------------------------- caches

def new_caches(model: Showo2, batch: int, kv_len: int, with_flow: bool):
  """Zeroed LLM (and flow-head) `layers.KVCache`s of `kv_len` slots in the compute dtype."""
  c = model.config
  dtype = to_dtype(c.dtype)
  llm = init_kv_cache(c.llm, batch, kv_len, dtype)
  flow = init_kv_cache(c.flow_head, batch, kv_len, dtype) if with_flow else None
  return llm, flow


def embed_tokens(model: Showo2, params, tokens: jax.Array) -> jax.Array:
  return model.apply({"params": params}, tokens, method=lambda m, t: m.showo.embed(t))


def prefill(model: Showo2, params, tokens, shift, placement, attention, kv_len: int, *,
            visual=None, te=None, with_flow: bool = False, logits: Optional[str] = "last"):
  """Runs the prefix through the LLM (and the flow head) once, filling the caches.

  tokens (B, P) aligned; placement / attention (B, M, 2) slot space; visual
  (B*M, 1 + Nv, D) tokens of the prefix's visual blocks (None: text only); te
  (B*M, Dh) their time embeddings (needed for the flow head when visual).
  `logits`: "last" -> (B, V) at slot P-1, "all" -> (B, P, V), None -> skip the
  lm_head. Returns (llm_cache, flow_cache or None, logits).

  The flow head's prefix states depend neither on the image being generated nor
  on its time (their modulation is the identity, or a clean context image's), so
  they are computed once here and attended to by every denoising step.
  """
  b, p = tokens.shape
  variables = {"params": params}
  positions = slot_positions(shift, 0, p)
  emb = model.apply(variables, tokens, visual, placement, method=Showo2.embed_sequence)
  mask = prefix_mask(shift, attention, p, kv_len)
  llm_cache, flow_cache = new_caches(model, b, kv_len, with_flow)
  hidden, llm_cache = model.apply(variables, emb, positions, mask, llm_cache, 0, method=Showo2.llm)
  if with_flow:
    if te is None:  # text-only prefix: every position gets the identity modulation
      te = jnp.zeros((b * placement.shape[1], model.config.flow_head.hidden_size), emb.dtype)
    local = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    slot_index = omni_mask.modulation_slot_index(placement, local)
    _, flow_cache = model.apply(variables, hidden, te, placement, positions, mask, flow_cache, 0,
                                slot_index, method=Showo2.flow)
  out = None
  if logits == "last":
    out = model.apply(variables, hidden[:, -1], method=Showo2.logits)
  elif logits == "all":
    out = model.apply(variables, hidden, method=Showo2.logits)
  return llm_cache, flow_cache, out
