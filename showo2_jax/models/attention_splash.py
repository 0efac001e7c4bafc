"""`splash`: Pallas TPU splash attention with the omni mask as a block-sparse mask.

The omni-attention mask (causal, plus full attention inside each visual block;
`omni_mask.py`) depends on each row's modality positions, so it is not one of
splash's static masks: it goes to the kernel as a *dynamic* mask
(`make_splash_mha` with a `jax.Array` mask, one per row). Splash tiles it into
(block_q, block_kv) blocks and classifies each block as empty, full or partial:
empty blocks (the future beyond every visual block, about half of a causal
mask) are skipped in the forward and both backward kernels, full blocks run
without a mask, and only partial blocks (the diagonal, block edges) read their
mask tile. No (B, H, Lq, Lk) score or probability tensor is ever materialised:
the kernel keeps an online softmax in float32 (scores accumulate in float32, as
in `dense`), and the backward recomputes probabilities block by block. The
(B, Lq, Lk) boolean mask itself is materialised (1 byte per entry), as for
`dense` and `chunked`.

Layout: our q (B, Lq, Hq, D), k/v (B, Lk, Hkv, D) become head-major per row;
grouped-query attention is native to the kernel (query head h reads kv head
h // (Hq // Hkv), our grouping). Lq and Lk are padded to whole blocks (padded
keys are masked out of every real row; padded query rows attend everywhere and
are dropped). The softmax scale is applied to q before the kernel (splash has no
scale argument), in q's dtype: exact to round-off in float32, one more rounding
of q in bfloat16 (what MaxText does).

Batch and heads: the kernel works on one row (vmapped over the batch). Under a
mesh (`jax.set_mesh`, as training and `compile` use) it runs inside `shard_map`
with rows over (`data`, `fsdp`) and heads over `tensor` (when both head counts
divide), since XLA cannot partition a Pallas kernel by itself.

Platforms: compiled with Mosaic for TPU (including AOT compiles for a TPU
topology on a CPU host); on any other platform the same kernel runs in Pallas
interpret mode, which is exact but slow: it exists to test the TPU path on CPU.

Decoding: a KV-cached step with at most `DECODE_MAX_QUERIES` queries has nothing
to skip (one query row against the cache) and would be padded to a whole query
block, so `attention.attention` sends such steps to `dense` (see there); the
cached flow sampler's image-block queries and prefills run here.

Sources: splash attention (jax.experimental.pallas.ops.tpu.splash_attention,
"SPLASH: sparse flash attention"); Show-o2 omni-attention (paper section 3.2,
spec section 3).
"""
from __future__ import annotations

import logging
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 512       # q and kv block (MaxText's splash default); capped at the sequence
LANES = 128                    # kv blocks must be whole multiples of the TPU lane width
DECODE_MAX_QUERIES = 8         # query lengths up to this go to `dense` (attention.attention)


_WARNED: set = set()


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _platform() -> str:
  """Where the kernel will run: the current mesh's devices (an AOT compile for a
  TPU topology on a CPU host is 'tpu'), else the default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def block_sizes(lq: int, lk: int, block_size: int = DEFAULT_BLOCK_SIZE):
  """(block_q, block_kv): `block_size` rounded to whole lanes, capped at the
  (lane-rounded) sequence lengths."""
  if block_size < 1:
    raise ValueError(f"splash block size must be >= 1, got {block_size}")
  b = _round_up(block_size, LANES)
  return min(b, _round_up(lq, LANES)), min(b, _round_up(lk, LANES))


def _kernel_block_sizes(bq: int, bk: int):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=import-outside-toplevel
  return splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                           block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
                           block_q_dq=bq, block_kv_dq=bk)


def mesh_axes(b: int, hq: int, hkv: int):
  """(batch, heads) mesh axes for running a Pallas kernel in `shard_map` under the
  current mesh: rows over (`data`, `fsdp`) when they divide the batch, heads over
  `tensor` when it divides both head counts; (None, None) without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None, None
  batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  shards = 1
  for a in batch_axes:
    shards *= mesh.shape[a]
  batch = batch_axes if batch_axes and b % shards == 0 else None
  t = mesh.shape.get("tensor", 1) if "tensor" in mesh.axis_names else 1
  heads = "tensor" if t > 1 and hq % t == 0 and hkv % t == 0 else None
  return batch, heads


def _one_row(q, k, v, mask, *, bq: int, bk: int, interpret: bool):
  """q (Hq, Lq, D), k/v (Hkv, Lk, D), mask (Lq, Lk) -> (Hq, Lq, D)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=import-outside-toplevel
  kernel = splash.make_splash_mha(mask[None], block_sizes=_kernel_block_sizes(bq, bk),
                                  head_shards=1, q_seq_shards=1, interpret=interpret)
  # The kernel's mask info is built with jnp under our trace, which turns its
  # Python flag `is_dynamic_mask` into a traced array; it only picks a name scope.
  kernel.fwd_mask_info = kernel.fwd_mask_info._replace(is_dynamic_mask=True)
  return kernel(q, k, v)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                     scale: float, *, block_size: int = DEFAULT_BLOCK_SIZE,
                     interpret: Optional[bool] = None) -> jax.Array:
  """Masked grouped-query attention with the splash kernel (see module doc).

  q (B, Lq, Hq, D); k, v (B, Lk, Hkv, D); mask: bool, broadcastable to (B, Lq,
  Lk), True = may attend (None = attend everywhere); every real query row must
  allow at least one key (true of causal and omni masks). `interpret`: None =
  Pallas interpret mode unless compiling for TPU. Returns (B, Lq, Hq, D) in v's
  dtype.
  """
  b, lq, hq, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  if hq % hkv:
    raise ValueError(f"query heads {hq} are not a multiple of kv heads {hkv}")
  if interpret is None:
    platform = _platform()
    interpret = platform != "tpu"
    if interpret and platform not in _WARNED:
      _WARNED.add(platform)
      log.warning("attention_impl=splash on %s runs the TPU kernel in Pallas interpret mode: exact "
                  "but slow (for tests); use 'chunked' or 'dense' off TPU", platform)
  bq, bk = block_sizes(lq, lk, block_size)
  pq, pk = _round_up(lq, bq) - lq, _round_up(lk, bk) - lk
  mask = jnp.ones((b, lq, lk), bool) if mask is None else jnp.broadcast_to(mask, (b, lq, lk))
  if pk:      # padded keys: masked out of every row
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pk)), constant_values=False)
  if pq:      # padded query rows: attend everywhere (no empty row), then dropped
    mask = jnp.pad(mask, ((0, 0), (0, pq), (0, 0)), constant_values=True)
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  q = jnp.pad(q, ((0, 0), (0, pq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)     # (B, Hq, Lq', D)
  k, v = (jnp.pad(x, ((0, 0), (0, pk), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (k, v))

  def rows(q, k, v, mask):
    one = lambda *a: _one_row(*a, bq=bq, bk=bk, interpret=interpret)  # noqa: E731
    return jax.vmap(one)(q, k, v, mask)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    batch, heads = mesh_axes(b, hq, hkv)
    qkv_spec = P(batch, heads, None, None)
    rows = jax.shard_map(rows, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch, None, None)),
                         out_specs=qkv_spec, check_vma=False)
  out = rows(q, k, v, mask)                                                     # (B, Hq, Lq', D)
  return out.transpose(0, 2, 1, 3)[:, :lq].astype(v.dtype)
