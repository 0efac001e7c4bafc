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
    ("activation_heads", "tensor"),
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


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves sizes (one may be -1) so that their product is `num_devices`."""
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {dict(mesh_config)}: at most one axis may be -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {dict(mesh_config)}: {num_devices} devices not divisible by {fixed}")
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {dict(mesh_config)} has {int(np.prod(sizes))} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def create_mesh(mesh_config: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor), devices laid out for the topology."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # noqa: BLE001 - fake CPU devices or odd topologies
    arr = np.asarray(devices).reshape(shape)
  mesh = Mesh(arr, MESH_AXES)
  log.info("mesh %s over %d devices", dict(zip(MESH_AXES, shape)), len(devices))
  return mesh


def logical_specs(boxed_tree):
  """Tree of logical PartitionSpecs from a boxed (nn.Partitioned) param tree."""
  return nn.get_partition_spec(boxed_tree)


def mesh_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Tree of NamedShardings for a boxed param tree (or its eval_shape)."""
  specs = logical_specs(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def data_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batch-dimension sharding over (data, fsdp) for an array of rank `ndim`."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def axis_rules(rules=LOGICAL_AXIS_RULES):
  """Context manager activating the rules for `nn.with_logical_constraint`."""
  return nn.logical_axis_rules(list(rules))


def shard_params(params, boxed_abstract, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Places a plain (unboxed) param tree on the mesh by its logical names."""
  shardings = mesh_shardings(boxed_abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.device_put(a, s), params, shardings)
