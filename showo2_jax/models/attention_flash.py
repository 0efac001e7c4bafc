"""`flash`: GPU flash attention (tokamax) with the omni mask as per-query key ranges.

Every mask Show-o2 builds lets each query attend to one contiguous range of keys:
the omni mask (`omni_mask.py`: causal, plus full attention inside each visual
block) allows [0, max(q, end of q's block)), and the samplers' left-padded masks
(`sample/prefix.py`) allow [pad, end) for real queries and the query itself for
pads. So the mask is passed to the kernel as two int32 vectors per row, the first
allowed key and one past the last (`key_ranges`), not as a dense bias or a
boolean tile: tokamax's Triton and Mosaic GPU flash kernels skip the key blocks
outside each query block's range (the future beyond every visual block) and mask
only the edges. Nothing of size (B, H, Lq, Lk) is materialised by the kernel;
scores and the online softmax are float32 (`logits_dtype=float32`).

A query with no allowed key gets the empty range (0, 0): tokamax's `xla` path then
returns the uniform average over all keys, as `dense` does, its GPU kernels zeros
(none of our masks has such a row: `prefix_mask` lets pad queries see themselves;
`splash` requires the same). A mask that is not one range per query would be
widened to its hull: `key_ranges` is exact only for range masks
(tests/models/test_attention_flash.py checks every mask builder above).

tokamax's public `dot_product_attention` takes a dense boolean mask only; the
per-query ranges go through its op objects (`tokamax._src.ops.attention`), so
the `gpu` extra pins tokamax's version. Implementations tried in order: on GPU
`mosaic_gpu` (sm90 / sm100), then `triton`; elsewhere tokamax's `xla` reference,
which builds the same ranges into a dense mask (how CI checks this path on CPU;
the GPU kernels themselves need a GPU). On TPU it raises ValueError: use
`splash`. Under a mesh the call runs in `shard_map` with rows over (`data`,
`fsdp`) and heads over `tensor`, as `splash`.

Sources: FlashAttention-2 (Dao, 2023); tokamax (github.com/openxla/tokamax)
`dot_product_attention` and its `Mask(k_start, k_end)`; Show-o2 omni-attention
(paper section 3.2, spec section 3).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from showo2_jax.models import attention_splash

GPU_IMPLEMENTATIONS = ("mosaic_gpu", "triton")
OTHER_IMPLEMENTATIONS = ("xla",)


def key_ranges(mask: jax.Array):
  """Boolean allow-mask (B, Lq, Lk) -> (k_start, k_end), each (B, Lq) int32: the
  first allowed key and one past the last; (0, 0) for a row with no allowed key."""
  lk = mask.shape[-1]
  allowed = jnp.any(mask, axis=-1)
  start = jnp.argmax(mask, axis=-1)
  end = lk - jnp.argmax(mask[..., ::-1], axis=-1)
  return (jnp.where(allowed, start, 0).astype(jnp.int32),
          jnp.where(allowed, end, 0).astype(jnp.int32))


def _ops(names: Sequence[str]):
  try:
    from tokamax._src.ops.attention import api, base  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("attention_impl='flash' needs tokamax: pip install -e '.[gpu]'") from e
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    # tokamax reads its options from absl flags and, unparsed, would parse sys.argv
    # (our CLI's or pytest's arguments: an UnrecognizedFlagError): take the defaults.
    flags.FLAGS.mark_as_parsed()
  unknown = [n for n in names if n not in api.IMPLEMENTATIONS]
  if unknown:
    raise ValueError(f"tokamax has no attention implementation {unknown}; "
                     f"it has {sorted(api.IMPLEMENTATIONS)}")
  return [api.IMPLEMENTATIONS[n] for n in names], base.Mask


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                    scale: float, *, implementations: Optional[Sequence[str]] = None) -> jax.Array:
  """Masked grouped-query attention with tokamax's flash kernels (see module doc).

  q (B, Lq, Hq, D); k, v (B, Lk, Hkv, D); mask: bool, broadcastable to (B, Lq,
  Lk), True = may attend, one contiguous key range per query (None = every
  key). `implementations`: tokamax names tried in order (default: GPU kernels on
  GPU, `xla` off GPU). Returns (B, Lq, Hq, D) in v's dtype. Raises ImportError
  without tokamax, ValueError on TPU (use `splash`) or for an unknown name,
  NotImplementedError (from tokamax) when no implementation takes these inputs.
  """
  b, lq, hq, _ = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  if hq % hkv:
    raise ValueError(f"query heads {hq} are not a multiple of kv heads {hkv}")
  if implementations is None:
    platform = attention_splash._platform()
    if platform == "tpu":
      raise ValueError("attention_impl='flash' is for GPUs (tokamax); on TPU use "
                       "--config.model.attention_impl=splash")
    implementations = GPU_IMPLEMENTATIONS if platform == "gpu" else OTHER_IMPLEMENTATIONS
  ops, mask_cls = _ops(implementations)
  if mask is None:
    mask = jnp.ones((b, lq, lk), bool)
  start, end = key_ranges(jnp.broadcast_to(mask, (b, lq, lk)))

  def rows(q, k, v, start, end):
    ranges = mask_cls(k_start=start[:, None], k_end=end[:, None])   # (B, 1 head, Lq)
    errors = []
    for op in ops:
      try:
        return op(q, k, v, mask=ranges, logits_scale=scale, logits_dtype=jnp.float32)
      except NotImplementedError as e:
        errors.append(f"{type(op).__name__}: {e}")
    raise NotImplementedError("no tokamax attention implementation takes these inputs: " + "; ".join(errors))

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    batch, heads = attention_splash.mesh_axes(b, hq, hkv)
    qkv, rng = P(batch, None, heads, None), P(batch, None)
    rows = jax.shard_map(rows, mesh=mesh, in_specs=(qkv, qkv, qkv, rng, rng), out_specs=qkv,
                         check_vma=False)
  return rows(q, k, v, start, end).astype(v.dtype)
