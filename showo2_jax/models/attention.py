"""Attention implementations behind one switch, `model.attention_impl`.

All take q (B, Lq, Hq, D), k and v (B, Lk, Hkv, D) (grouped-query: query head h
reads kv head h // (Hq // Hkv)) and the boolean allow-mask (B, Lq, Lk) of the
omni-attention (`omni_mask.py`; causal for plain decoding), and return
(B, Lq, Hq, D) in v's dtype. Scores accumulate in float32 and the softmax runs
in float32 in every implementation.

- `dense`: `layers.dot_product_attention`, the parity reference; materialises the
  (B, H, Lq, Lk) float32 scores and probabilities of every layer.
- `chunked`: pure JAX, any backend, the CPU default of the `small` config.
  Queries are processed `attention_chunk_size` rows at a time (`lax.map`), and
  each chunk only against the key prefix its mask rows need: the first key
  blocks (of the same size) up to the last one any of its rows may attend to,
  chosen at run time from the mask (`lax.switch` over the prefix lengths). Under
  the omni mask (causal outside visual blocks) that skips the fully masked blocks
  above the diagonal. The layouts are heads-major ((B, Hkv, G * C, D) queries,
  (B, Hkv, Lk, D) keys, values), so every product is one batched GEMM per (batch
  row, KV head) with no transposes in the loop. The gradient is a `custom_vjp`:
  FlashAttention-2's backward per chunk, probabilities recomputed from the saved
  row max and denominator, sum_k p dp taken as sum_d dout * out. Values and
  gradients match `dense` to float32 round-off (masked keys contribute exact zeros
  in dense too; a row with no allowed key keeps dense's uniform average), while
  nothing of size (B, H, Lq, Lk) is stored between forward and backward; the
  (B, Lq, Lk) boolean mask is (1 byte per entry, against 4 * H of scores).
  Measured (benchmarks/attention_benchmark.py, small-config LLM layer, fp32, 2
  CPU cores): forward + backward ~3x less CPU time than `dense` at chunk 128.
- `splash`: TPU Pallas splash attention with the mask as a block-sparse mask
  (`attention_splash.py`; empty blocks skipped; `attention_chunk_size` is its
  block size, rounded to 128). Off TPU it runs in Pallas interpret mode (exact,
  slow: for tests). KV-cached decoding steps (Lq <= DECODE_MAX_QUERIES = 8) use
  `dense`: one query row has no blocks to skip.
- `flash`: GPU flash attention from tokamax (Triton / Mosaic GPU kernels) with
  the mask as one key range per query (`attention_flash.py`; blocks outside a
  query block's ranges skipped). Off GPU the same call runs tokamax's XLA
  reference (for tests). Decoding steps use `dense`, as for `splash`.

Sources: the omni-attention of Show-o2 (paper section 3.2, spec section 3); the
query chunking is the memory-efficient attention of Rabe & Staats (2021) without
the key-side online softmax (a chunk's keys are one block, so no rescaling is
needed); the backward is that of FlashAttention-2 (Dao, 2023, algorithm 2).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from showo2_jax.models import attention_flash, attention_splash, layers

ATTENTION_IMPLS = ("dense", "chunked", "splash", "flash")
DEFAULT_CHUNK_SIZE = 512


def check_impl(impl: str) -> str:
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention_impl '{impl}'; choose one of {list(ATTENTION_IMPLS)}")
  return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array], scale: float, *,
              impl: str = "dense", chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Masked grouped-query attention with the implementation `impl` (see module doc)."""
  impl = check_impl(impl)
  if impl == "splash" and q.shape[1] > attention_splash.DECODE_MAX_QUERIES:
    return attention_splash.splash_attention(q, k, v, mask, scale, block_size=chunk_size)
  if impl == "flash" and q.shape[1] > attention_splash.DECODE_MAX_QUERIES:
    return attention_flash.flash_attention(q, k, v, mask, scale)
  if impl in ("dense", "splash", "flash"):
    return layers.dot_product_attention(q, k, v, mask, scale)
  return chunked_attention(q, k, v, mask, scale, chunk_size)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                      scale: float, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Query chunks of `chunk_size` rows over the key prefix the mask needs (see module doc).

  q (B, Lq, Hq, D), k and v (B, Lk, Hkv, D), mask (anything that broadcasts to
  (B, Lq, Lk), True = may attend, None = all). Returns (B, Lq, Hq, D) in v's
  dtype. Lq that is not a multiple of the chunk is padded (padded rows attend to
  every key and are dropped). Decoding steps (Lq <= chunk) are plain `dense`.
  Raises ValueError for chunk_size < 1.
  """
  if chunk_size < 1:
    raise ValueError(f"attention_chunk_size must be >= 1, got {chunk_size}")
  b, lq, hq, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  if lq <= chunk_size:
    return layers.dot_product_attention(q, k, v, mask, scale)
  n = -(-lq // chunk_size)
  pad = n * chunk_size - lq
  # Callers may pass a mask that only broadcasts to (B, Lq, Lk) (e.g. one row for
  # every query of a decoding step), as `dense` accepts: give it its full shape.
  mask = jnp.ones((b, lq, lk), bool) if mask is None else jnp.broadcast_to(mask, (b, lq, lk))
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)), constant_values=True)
  # Heads-major layouts, once: query chunk i of KV head h is the (G * C, D) matrix
  # of its G query heads' rows, so every product below is one batched GEMM per
  # (batch row, KV head) with no transposes inside the loop.
  g = hq // hkv
  qc = q.reshape(b, n, chunk_size, hkv, g, d).transpose(1, 0, 3, 4, 2, 5)   # (n, B, Hkv, G, C, D)
  mc = mask.reshape(b, n, chunk_size, lk).swapaxes(0, 1)                  # (n, B, C, Lk)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)               # (B, Hkv, Lk, D)
  out = _chunked(qc, kt, vt, mc, _key_blocks_needed(mc, chunk_size), float(scale), chunk_size)
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * chunk_size, hq, d)[:, :lq]


def _key_blocks_needed(mc: jax.Array, block: int) -> jax.Array:
  """(n,) int32: per query chunk, index of the last key block any of its rows may
  attend to. A chunk with a row that may attend to nothing takes every key block,
  so that row keeps `dense`'s uniform average over all keys."""
  lk = mc.shape[-1]
  allowed = jnp.any(mc, axis=(1, 2))                                 # (n, Lk)
  last = jnp.max(jnp.where(allowed, jnp.arange(1, lk + 1, dtype=jnp.int32), 0), axis=-1)
  last = jnp.where(jnp.any(~jnp.any(mc, axis=-1), axis=(1, 2)), lk, last)
  nb = -(-lk // block)
  return jnp.clip((last + block - 1) // block - 1, 0, nb - 1).astype(jnp.int32)


def _key_lengths(lk: int, block: int) -> list:
  return [min((j + 1) * block, lk) for j in range(-(-lk // block))]


def _scores(q, k, m, scale):
  """(B, Hkv, G, C, kl) float32 masked scores of one query chunk q (B, Hkv, G, C, D)
  against keys k (B, Hkv, kl, D) under the chunk's mask rows m (B, C, kl)."""
  b, h, g, c, d = q.shape
  s = jnp.einsum("bhmd,bhkd->bhmk", q.reshape(b, h, g * c, d), k, preferred_element_type=jnp.float32)
  s = s.reshape(b, h, g, c, k.shape[2]) * scale
  return jnp.where(m[:, None, None], s, jnp.finfo(jnp.float32).min)


def _chunk_forward(q, k, v, m, scale, kl):
  """One query chunk against the first `kl` keys: (out like q, (row max, log of the
  softmax denominator), each (B, Hkv, G, C)). The two are kept apart (not summed
  into a log-sum-exp) so that a row with no allowed key, whose max is float32's
  lowest, keeps its uniform probabilities in the backward."""
  b, h, g, c, d = q.shape
  s = _scores(q, k[:, :, :kl], m[..., :kl], scale)
  mx = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - mx)
  den = jnp.sum(e, axis=-1, keepdims=True)
  if v.dtype == jnp.float32:
    # The softmax's division after the PV product (as FlashAttention does): one pass
    # over the (C, D) output instead of one over the (C, kl) block of probabilities;
    # float32 round-off apart, the same numbers.
    o = jnp.einsum("bhmk,bhkd->bhmd", e.reshape(b, h, g * c, kl), v[:, :, :kl],
                   preferred_element_type=jnp.float32) / den.reshape(b, h, g * c, 1)
  else:
    # Lower precision: the probabilities rounded to v's dtype as `dense` rounds them
    # (bit-identical to it, tests/models/test_attention_impl.py).
    p = (e / den).astype(v.dtype).reshape(b, h, g * c, kl)
    o = jnp.einsum("bhmk,bhkd->bhmd", p, v[:, :, :kl], preferred_element_type=jnp.float32)
  return o.astype(v.dtype).reshape(q.shape), (mx[..., 0], jnp.log(den)[..., 0])


def _chunk_backward(q, k, v, m, stats, do, delta, scale, kl):
  """Gradients of one query chunk against the first `kl` keys (FlashAttention-2's
  backward: p recomputed from the saved softmax statistics, sum_k p dp = sum_d do o)."""
  b, h, g, c, d = q.shape
  lk = k.shape[2]
  kk, vv = k[:, :, :kl], v[:, :, :kl]
  mx, log_den = stats
  p = jnp.exp((_scores(q, kk, m[..., :kl], scale) - mx[..., None]) - log_den[..., None])
  do2 = do.reshape(b, h, g * c, d)
  p2 = p.reshape(b, h, g * c, kl)
  dv = jnp.einsum("bhmk,bhmd->bhkd", p2.astype(do.dtype), do2, preferred_element_type=jnp.float32)
  dp = jnp.einsum("bhmd,bhkd->bhmk", do2, vv, preferred_element_type=jnp.float32)
  # Masked scores are constants (dense's `where`): no gradient, even in a row with
  # no allowed key, whose probabilities are uniform rather than zero.
  ds = jnp.where(m[:, None, None, :, :kl], (p2 * (dp - delta.reshape(b, h, g * c, 1))).reshape(p.shape), 0.)
  ds = (ds * scale).astype(q.dtype).reshape(b, h, g * c, kl)
  dq = jnp.einsum("bhmk,bhkd->bhmd", ds, kk, preferred_element_type=jnp.float32).reshape(q.shape)
  dk = jnp.einsum("bhmk,bhmd->bhkd", ds, q.reshape(b, h, g * c, d), preferred_element_type=jnp.float32)
  widen = ((0, 0), (0, 0), (0, lk - kl), (0, 0))
  return dq, jnp.pad(dk, widen), jnp.pad(dv, widen)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _chunked(qc, k, v, mc, need, scale, block):
  return _chunked_fwd(qc, k, v, mc, need, scale, block)[0]


def _chunked_fwd(qc, k, v, mc, need, scale, block):
  branches = [functools.partial(_chunk_forward, scale=scale, kl=kl) for kl in _key_lengths(k.shape[2], block)]
  out, stats = jax.lax.map(lambda x: jax.lax.switch(x[2], branches, x[0], k, v, x[1]), (qc, mc, need))
  return out, (qc, k, v, mc, need, out, stats)


def _chunked_bwd(scale, block, res, do):
  qc, k, v, mc, need, out, stats = res
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)   # (n, B, Hkv, G, C)
  branches = [functools.partial(_chunk_backward, scale=scale, kl=kl) for kl in _key_lengths(k.shape[2], block)]

  def step(acc, x):
    q_i, m_i, need_i, stats_i, do_i, delta_i = x
    dq, dk, dv = jax.lax.switch(need_i, branches, q_i, k, v, m_i, stats_i, do_i, delta_i)
    return (acc[0] + dk, acc[1] + dv), dq.astype(qc.dtype)

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(step, (zeros, zeros), (qc, mc, need, stats, do, delta))
  return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
