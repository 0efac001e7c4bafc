"""Attention implementations behind one switch, `model.attention_impl`.

All take q (B, Lq, Hq, D), k and v (B, Lk, Hkv, D) (grouped-query: query head h
reads kv head h // (Hq // Hkv)) and the boolean allow-mask (B, Lq, Lk) of the
omni-attention (`omni_mask.py`; causal for plain decoding), and return
(B, Lq, Hq, D) in v's dtype. Scores accumulate in float32 and the softmax runs
in float32 in every implementation.

- `dense`: `layers.dot_product_attention`, the parity reference; materialises the
  (B, H, Lq, Lk) float32 scores and probabilities of every layer.
- `chunked`: pure JAX, any backend. Queries are processed `attention_chunk_size`
  at a time (`lax.map`), each chunk with the dense formula on its rows of the
  mask, and the backward pass recomputes a chunk's probabilities instead of
  storing them (`jax.checkpoint`). Each row's softmax is the dense one, so values
  and gradients match `dense` to float32 round-off, while the attention
  temporaries shrink from (B, H, Lq, Lk) to (B, H, chunk, Lk) floats. The (B, Lq,
  Lk) boolean mask itself is still materialised (1 byte per entry, against
  4 * H bytes of scores).
- `splash`: TPU Pallas splash attention with the mask as a block-sparse mask
  (`attention_splash.py`; empty blocks skipped; `attention_chunk_size` is its
  block size, rounded to 128). Off TPU it runs in Pallas interpret mode (exact,
  slow: for tests). KV-cached decoding steps (Lq <= DECODE_MAX_QUERIES = 8) use
  `dense`: one query row has no blocks to skip.

Sources: the omni-attention of Show-o2 (paper section 3.2, spec section 3); the
query chunking is the memory-efficient attention of Rabe & Staats (2021) without
the key-side online softmax (keys are not chunked, so no rescaling is needed).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from showo2_jax.models import attention_splash, layers

ATTENTION_IMPLS = ("dense", "chunked", "splash")
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
  if impl in ("dense", "splash"):
    return layers.dot_product_attention(q, k, v, mask, scale)
  return chunked_attention(q, k, v, mask, scale, chunk_size)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                      scale: float, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """`dense` on `chunk_size` query rows at a time, rematerialised in the backward.

  Lq that is not a multiple of the chunk is padded (padded rows attend to every
  key and are dropped). Decoding steps (Lq <= chunk) are plain dense attention.
  """
  if chunk_size < 1:
    raise ValueError(f"attention_chunk_size must be >= 1, got {chunk_size}")
  b, lq, hq, d = q.shape
  lk = k.shape[1]
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
  qc = q.reshape(b, n, chunk_size, hq, d).swapaxes(0, 1)          # (n, B, C, Hq, D)
  mc = mask.reshape(b, n, chunk_size, lk).swapaxes(0, 1)          # (n, B, C, Lk)

  @jax.checkpoint
  def one_chunk(x):
    q_chunk, m_chunk = x
    return layers.dot_product_attention(q_chunk, k, v, m_chunk, scale)

  out = jax.lax.map(one_chunk, (qc, mc))                           # (n, B, C, Hq, D)
  return out.swapaxes(0, 1).reshape(b, n * chunk_size, hq, d)[:, :lq]
