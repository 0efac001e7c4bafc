"""A Dense matmul whose kernel gradient is reduce-scattered over `fsdp`.

Under FSDP a kernel is sharded over `fsdp` and the rows of a batch are too.
The kernel's gradient sums x^T dy over the rows, so every device holds a
partial sum of the *whole* gradient. XLA's SPMD partitioner (GSPMD and Shardy
alike, jax 0.10) lays that dot out replicated, since `fsdp` already splits its
contracting dimension, and then slices the shard out:

    all-reduce(full f32/bf16 gradient) -> dynamic-slice(this device's shard)

Neither XLA:CPU nor libtpu 0.0.42 rewrites that pair into a reduce-scatter
(XLA:GPU's ReduceScatterCreator does), so each device receives and holds the
whole gradient: about twice the bytes of a reduce-scatter, and a full-size
temporary per kernel.

`matmul` keeps the forward as it was (GSPMD all-gathers the kernel) and computes
the kernel's gradient itself, inside `shard_map`: each device's partial
x^T dy, then `psum_scatter` over `fsdp` onto the kernel's own shard (and `psum`
over `data`). The values are the same sums in another order. Without a mesh, or
with fsdp=1, or when the rows do not split over (data, fsdp), it is the plain
matmul (parity paths never take the custom gradient).

On TPU the compiler may still lower a reduce-scatter as an all-reduce: libtpu's
reduce-scatter decomposer does so for some v5p layouts (v5p:2x2x2 with fsdp=8;
kept on v5p-8 with fsdp=2 and on v5e:2x4); see docs/training.md.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _dot(x, kernel, dtype):
  """x (..., in) @ kernel (in, out) in `dtype`, accumulated in float32."""
  return jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                             (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def plan(x_shape, kernel_shape, axes) -> Optional[tuple]:
  """(x_spec, dy_spec, kernel_spec, scatter_dim, data_axes) for the current mesh
  and logical rules, or None where the plain matmul is right (no mesh, fsdp=1,
  the kernel not split over fsdp, rows that do not split over (data, fsdp))."""
  from showo2_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "fsdp" not in mesh.axis_names or mesh.shape["fsdp"] == 1:
    return None
  sizes = dict(mesh.shape)
  try:
    logical = nn.logical_to_mesh_axes(axes)
  except Exception:  # noqa: BLE001 - no rules active: leave it to GSPMD
    return None
  spec = sharding_lib.fit_spec(P(*logical), kernel_shape, sizes)
  entries = [sharding_lib.entry_axes(e) for e in tuple(spec) + (None,) * (2 - len(tuple(spec)))]
  if any(len(e) > 1 for e in entries) or any(a not in ("fsdp", "tensor") for e in entries for a in e):
    return None
  dims = [i for i, e in enumerate(entries) if e == ("fsdp",)]
  if len(dims) != 1:
    return None
  batch = tuple(a for a in sharding_lib.BATCH_AXES if a in sizes)
  rows = 1
  for a in batch:
    rows *= sizes[a]
  if not x_shape or x_shape[0] % rows:
    return None
  t_in = entries[0][0] if entries[0] == ("tensor",) else None
  t_out = entries[1][0] if entries[1] == ("tensor",) else None
  mid = (None,) * (len(x_shape) - 2)
  x_spec = P(batch, *mid, t_in)
  dy_spec = P(batch, *mid, t_out)
  k_spec = P(*[e[0] if e else None for e in entries])
  data_axes = tuple(a for a in batch if a != "fsdp" and sizes[a] > 1)
  return x_spec, dy_spec, k_spec, dims[0], data_axes


def matmul(x: jax.Array, kernel: jax.Array, dtype: Any, axes: tuple[str, str]) -> jax.Array:
  """x (..., in) @ kernel (in, out): `dtype` operands, float32 result; the
  kernel's gradient reduce-scattered over fsdp where a mesh splits it (module
  docstring). `axes`: the kernel's logical axis names."""
  p = plan(tuple(x.shape), tuple(kernel.shape), tuple(axes)) if x.ndim >= 2 else None
  if p is None:
    return _dot(x, kernel, dtype)
  return _scattered(p, jnp.dtype(dtype), x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scattered(p, dtype, x, kernel):
  return _dot(x, kernel, dtype)


def _fwd(p, dtype, x, kernel):
  return _dot(x, kernel, dtype), (x, kernel)


def _bwd(p, dtype, res, dy):
  # Transposes of the linear maps x -> x @ kernel and kernel -> x @ kernel, as
  # autodiff forms them (linear_transpose: no forward pass is re-traced).
  x, kernel = res
  dx, = jax.linear_transpose(lambda x: _dot(x, kernel, dtype), x)(dy)
  x_spec, dy_spec, k_spec, scatter_dim, data_axes = p

  def local(x, dy):
    # This device's partial gradient of the kernel as cast to `dtype` (the
    # product's operand), reduce-scattered in that dtype, then cast to the kernel's.
    kb = jax.ShapeDtypeStruct((x.shape[-1], dy.shape[-1]), dtype)
    dk, = jax.linear_transpose(lambda k: jax.lax.dot_general(
        x.astype(dtype), k, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32), kb)(dy)
    dk = jax.lax.psum_scatter(dk, "fsdp", scatter_dimension=scatter_dim, tiled=True)
    if data_axes:
      dk = jax.lax.psum(dk, data_axes)
    return dk.astype(kernel.dtype)

  dk = jax.shard_map(local, in_specs=(x_spec, dy_spec), out_specs=k_spec, check_vma=False)(x, dy)
  return dx, dk


_scattered.defvjp(_fwd, _bwd)
