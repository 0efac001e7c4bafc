"""Mesh construction and the one table mapping logical axis names to mesh axes.

Every parameter is created with logical names (`embed`, `mlp`, `heads`, `vocab`,
...) and activations are constrained by name (`activation_batch`, ...). Changing
the parallelism means changing `config.mesh` (sizes of `data`, `fsdp`, `tensor`)
or this table, never model code.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None = replicated). First match wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # parameters: FSDP shards the model dimension, tensor parallelism the wide one
    ("embed", "fsdp"),
    ("embed_out", None),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),
    ("fusion_in", "fsdp"),
    ("freq", None),
    ("pos", None),
    ("patch", None),
    ("latent", None),
    ("conv_h", None),
    ("conv_w", None),
    ("norm", None),
    ("head_dim", None),
    ("layers", None),
)


DCN_AXES = tuple(f"dcn_{a}" for a in MESH_AXES)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int,
               keys: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
  """Resolves the sizes of `keys` (one may be -1) so their product is `num_devices`."""
  sizes = [int(mesh_config.get(a, 1)) for a in keys]
  shown = {k: int(mesh_config.get(k, 1)) for k in keys}
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {shown}: at most one axis may be -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {shown}: {num_devices} devices not divisible by {fixed}")
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {shown} has {int(np.prod(sizes))} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def num_slices(devices: Sequence[jax.Device]) -> int:
  """Distinct TPU slices among `devices` (1 for CPU/GPU and single-slice TPU)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def create_mesh(mesh_config: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor), devices laid out for the topology.

  `mesh_config` holds the per-slice (ICI) sizes `data`, `fsdp`, `tensor` and the
  across-slices (DCN) sizes `dcn_data`, `dcn_fsdp`, `dcn_tensor` (MaxText's
  `ici_*` / `dcn_*`); each may have one -1. Mesh axis `a` has size
  `a * dcn_a`. One slice: `mesh_utils.create_device_mesh`, which maps the axes
  onto the torus so the innermost (`tensor`, then `fsdp`) get the fastest
  links. Several slices (devices with distinct `slice_index`):
  `mesh_utils.create_hybrid_device_mesh`; by default (`dcn_data=-1`) slices only
  split the batch, so DCN carries one gradient all-reduce per step and
  FSDP/tensor collectives stay on ICI.

  Raises ValueError naming the sizes when the devices cannot be laid out so
  (nothing falls back silently).
  """
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  devices = list(jax.devices() if devices is None else devices)
  slices = num_slices(devices)
  dcn_config = {a: mesh_config.get(a, -1 if a == "dcn_data" else 1) for a in DCN_AXES}
  try:
    dcn = mesh_shape(dcn_config, slices, DCN_AXES)
  except ValueError as e:
    raise ValueError(f"{e} (slices; config.mesh.dcn_* must multiply to the number of slices)") from None
  if len(devices) % slices:
    raise ValueError(f"{len(devices)} devices do not split into {slices} equal slices")
  ici = mesh_shape(mesh_config, len(devices) // slices)
  shape = tuple(i * d for i, d in zip(ici, dcn))
  try:
    if slices > 1:
      arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
      arr = _device_mesh(ici, devices)
  except (ValueError, NotImplementedError, AssertionError) as e:
    raise ValueError(f"cannot lay out mesh data={shape[0]} fsdp={shape[1]} tensor={shape[2]} "
                     f"(per slice {ici}, across {slices} slice(s) {dcn}) on {len(devices)} "
                     f"{devices[0].device_kind} devices: {e}") from None
  mesh = Mesh(arr, MESH_AXES)
  log.info("mesh %s over %d devices (%d slice(s), dcn %s)", dict(zip(MESH_AXES, shape)),
           len(devices), slices, dict(zip(MESH_AXES, dcn)))
  return mesh


def _device_mesh(shape, devices):
  """create_device_mesh (TPU: axes mapped onto the torus; CPU/GPU: process-major
  order). When the sizes do not map onto whole torus axes it says so and splits
  physical axes (slower collectives, still correct)."""
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError) as e:
    if devices[0].platform != "tpu":
      raise
    log.warning("mesh %s does not map onto whole axes of the %s torus (%s); splitting physical "
                "axes, which makes some collectives hop further", shape, devices[0].device_kind, e)
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def logical_specs(boxed_tree):
  """Tree of logical PartitionSpecs from a boxed (nn.Partitioned) param tree."""
  return nn.get_partition_spec(boxed_tree)


def mesh_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Tree of NamedShardings for a boxed param tree (or its eval_shape)."""
  specs = logical_specs(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same whole array on every device of `mesh`."""
  return NamedSharding(mesh, P())


def axis_rules(rules=LOGICAL_AXIS_RULES):
  """Context manager activating the rules for `nn.with_logical_constraint`."""
  return nn.logical_axis_rules(list(rules))


def shard_params(params, boxed_abstract, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Places a plain (unboxed) param tree on the mesh by its logical names."""
  shardings = mesh_shardings(boxed_abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.device_put(a, s), params, shardings)
