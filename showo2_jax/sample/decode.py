"""KV-cached text generation: prefill with the omni mask, then causal decoding.

The original grows the sequence and recomputes the whole model for every token
(`mmu_generate`, `lm_generate`, `mm_generate`; spec 10.17). Prompts always end
with text, so a generated token sees exactly "everything before it" and the grown
omni mask equals plain causal attention for it (spec 3): one prefill of the prompt
with the omni mask plus one cached step per token is exactly equivalent.

Batches of prompts of different lengths are left-aligned (`prefix.align`), so
every row writes its n-th token at the same cache slot. Rows stop independently
at a stop token (then emit `pad_id`); the loop ends when every row has stopped or
`max_new_tokens` is reached. The whole thing is one `jax.jit` with a
`lax.while_loop` and a preallocated cache.

`generate_uncached` is the original's loop shape (full recompute each token),
kept as the reference in tests and as the baseline in benchmarks.
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.models.showo2 import Showo2
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample import progress
from showo2_jax.sample.tokens import TokenSampling, sample_next, sample_next_rows


class Generated(NamedTuple):
  tokens: jax.Array            # (B, max_new_tokens) int32, pad after a row's stop token
  num_steps: jax.Array         # () int32 decoding steps actually run
  prompt_logits: Optional[jax.Array]  # (B, P, V) when requested
  step_logits: Optional[jax.Array]    # (B, max_new_tokens, V): logits after each new token


# Host sinks of streamed tokens, by id (see `generate(stream_id=...)`).
_STREAMS: dict = {}
_STREAM_IDS = itertools.count(1)


def open_stream(sink) -> int:
  """Registers `sink(step, tokens (B,) np.int32)`; returns the id to pass as `stream_id`.

  The sink runs on a JAX host-callback thread once per decoding step, possibly
  out of step order (`step` says which); close it with `close_stream`.
  """
  i = next(_STREAM_IDS) % (2**31 - 1)
  _STREAMS[i] = sink
  return i


def close_stream(stream_id: int) -> None:
  _STREAMS.pop(int(stream_id), None)


def _emit(stream_id, step, tokens):
  sink = _STREAMS.get(int(stream_id))
  if sink is not None:
    sink(int(step), np.asarray(tokens))


def _step_mask(shift, slot, kv_len):
  return prefix_lib.window_mask(shift, slot, 1, kv_len, bidirectional=False)


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "sampling", "record_logits", "show_progress"))
def generate(model: Showo2, params, tokens, shift, lengths, placement, attention, visual,
             stop_ids, pad_id, rng, *, max_new_tokens: int, sampling: TokenSampling,
             record_logits: bool = False, show_progress: bool = False,
             row_sampling=None, row_max_new=None, stream_id=None) -> Generated:
  """Cached generation after an aligned prompt.

  tokens (B, P), shift / lengths (B,), placement / attention (B, M, 2) in slot
  space (see `prefix.AlignedPrefix`); visual (B*M, 1 + Nv, D) or None; stop_ids
  (S,) int32 (`stop_array`; -1 entries match nothing). `record_logits` also returns the prompt's and every
  step's logits (for parity checks; memory B x (P + max_new) x V).

  Server options (traced, so one compilation serves requests with different
  settings): row_sampling = (temperature (B,), top_p (B,)) replaces `sampling`
  per row; row_max_new (B,) int32 stops each row after its own number of
  tokens; stream_id (int32 scalar from `open_stream`) sends every step's tokens
  to that host sink as they are produced.
  """
  b, p = tokens.shape
  kv_len = p + max_new_tokens
  llm_cache, _, logits = prefix_lib.prefill(
      model, params, tokens, shift, placement, attention, kv_len, visual=visual,
      logits="all" if record_logits else "last")
  prompt_logits = logits if record_logits else None
  last = (logits[:, -1] if record_logits else logits).astype(jnp.float32)
  vocab = last.shape[-1]
  variables = {"params": params}

  def cond(state):
    i, _, done, *_ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, out, done, logits, cache, rng, buf = state
    rng, sub = jax.random.split(rng)
    if row_sampling is None:
      nxt = sample_next(sub, logits, sampling)
    else:
      nxt = sample_next_rows(sub, logits, *row_sampling)
    tok = jnp.where(done, pad_id, nxt)
    out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
    done = done | jnp.isin(tok, stop_ids)
    if row_max_new is not None:
      done = done | (i + 1 >= row_max_new)
    if stream_id is not None:
      jax.debug.callback(_emit, stream_id, i, tok)
    emb = prefix_lib.embed_tokens(model, params, tok[:, None])
    slot = p + i
    hidden, cache = model.apply(variables, emb, (lengths + i)[:, None], _step_mask(shift, slot, kv_len),
                                cache, slot, method=Showo2.llm)
    logits = model.apply(variables, hidden[:, 0], method=Showo2.logits).astype(jnp.float32)
    if record_logits:
      buf = jax.lax.dynamic_update_slice(buf, logits[:, None], (0, i, 0))
    progress.report(show_progress, i)
    return i + 1, out, done, logits, cache, rng, buf

  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  buf = jnp.zeros((b, max_new_tokens, vocab), jnp.float32) if record_logits else jnp.zeros(())
  state = (jnp.zeros((), jnp.int32), out, jnp.zeros((b,), bool), last, llm_cache, rng, buf)
  i, out, _, _, _, _, buf = jax.lax.while_loop(cond, body, state)
  return Generated(out, i, prompt_logits, buf if record_logits else None)


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "sampling", "compute_all_logits", "num_steps"))
def generate_uncached(model: Showo2, params, tokens, shift, lengths, placement, attention, visual,
                      pad_id, rng, *, max_new_tokens: int, sampling: TokenSampling,
                      compute_all_logits: bool = True, num_steps: Optional[int] = None) -> jax.Array:
  """The original's loop: every token recomputes the full (padded) sequence.

  Same inputs as `generate` (no stopping: it always runs max_new_tokens steps).
  The sequence is padded to P + max_new_tokens once, so it compiles once; the
  not-yet-generated slots are in the future of every query that matters, so
  causality makes them irrelevant. `compute_all_logits` applies the lm_head to
  every position, as the original does. `num_steps` < max_new_tokens runs only
  the first steps (benchmarks time a few and extrapolate). Returns (B, max_new_tokens).
  """
  del lengths
  b, p = tokens.shape
  total = p + max_new_tokens
  seq = jnp.concatenate([tokens, jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1)
  positions = prefix_lib.slot_positions(shift, 0, total)
  mask = prefix_lib.prefix_mask(shift, attention, total, total)
  variables = {"params": params}

  def body(i, state):
    seq, rng = state
    emb = model.apply(variables, seq, visual, placement, method=Showo2.embed_sequence)
    hidden, _ = model.apply(variables, emb, positions, mask, method=Showo2.llm)
    slot = p - 1 + i
    if compute_all_logits:
      logits = model.apply(variables, hidden, method=Showo2.logits)
      logits = jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False)
    else:
      h = jax.lax.dynamic_index_in_dim(hidden, slot, axis=1, keepdims=False)
      logits = model.apply(variables, h, method=Showo2.logits)
    rng, sub = jax.random.split(rng)
    tok = sample_next(sub, logits, sampling)
    return jax.lax.dynamic_update_slice(seq, tok[:, None], (0, slot + 1)), rng

  seq, _ = jax.lax.fori_loop(0, num_steps or max_new_tokens, body, (seq, rng))
  return seq[:, p:]


def stop_array(ids: Sequence[int], size: int = 4) -> jax.Array:
  """Stop ids padded with -1 to a fixed size, so different stop sets share a compile."""
  ids = list(ids)
  if len(ids) > size:
    raise ValueError(f"at most {size} stop ids, got {ids}")
  return jnp.asarray(ids + [-1] * (size - len(ids)), jnp.int32)


def trim(tokens: np.ndarray, stop_ids: Sequence[int], keep_stop: bool = False) -> list[list[int]]:
  """Per row: the tokens up to the first stop token (included if keep_stop)."""
  out = []
  for row in np.asarray(tokens).tolist():
    cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
    out.append(row if cut is None else row[:cut + 1 if keep_stop else cut])
  return out
