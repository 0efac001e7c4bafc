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
    ("activation_kv_heads", None),
    ("activation_head_dim", None),
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


def create_mesh(mesh_config: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None,
                fit_to: Any = None) -> Mesh:
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

  `fit_to`: the boxed abstract train state (`train/state.abstract_state`) when
  the mesh is for it; with `fsdp=-1` the ICI split between `data` and `fsdp` is
  then chosen by `fit_mesh_config` (fsdp that divides the params' dimensions),
  the reason logged as a warning.

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
  if fit_to is not None:
    mesh_config, reason = fit_mesh_config(mesh_config, len(devices) // slices, dcn, fit_to)
    if reason:
      log.warning("%s", reason)
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


def unboxed(tree):
  """Strips Flax's logical-axis boxes (without the sharding constraint that
  `nn.meta.unbox` adds for LogicallyPartitioned leaves under a mesh, which fails on
  ShapeDtypeStructs)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def mesh_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Tree of NamedShardings for a boxed param tree (or its eval_shape), every
  dimension divisible by the mesh axes it is split over (`fit_spec`)."""
  specs = logical_specs(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  return fit_shardings(shardings, unboxed(boxed_tree), mesh)


def entry_axes(entry) -> tuple:
  """One PartitionSpec entry (None, an axis name or a tuple of names) -> tuple of names."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


# Mesh axes the batch dimension splits over: LOGICAL_AXIS_RULES' `activation_batch`
# rule (train/data.py shards global batches with it, models/fsdp_matmul.py plans with it).
BATCH_AXES: tuple[str, ...] = entry_axes(
    next(mesh_axes for name, mesh_axes in LOGICAL_AXIS_RULES if name == "activation_batch"))


def fit_spec(spec: P, shape: Sequence[int], axis_sizes: Mapping[str, int]) -> P:
  """`spec` with every dimension divisible by the mesh axes that split it.

  A jitted step's arguments must split evenly (SigLIP's 1152-wide `embed` over
  fsdp=256 cannot be lowered). Per dimension, the longest prefix of its mesh axes
  whose sizes divide it is kept; each axis dropped moves to the largest other
  dimension of the array that is not split yet and that it divides (so an
  (1152, 4304) kernel with fsdp=256 stays sharded 256 ways if some dimension
  allows it), else that axis replicates the array. Sizes-1 axes are kept as they
  are. Returns a PartitionSpec of len(shape) entries (trailing Nones trimmed).
  """
  entries = [entry_axes(e) for e in tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))]
  dropped = []
  for i, axes in enumerate(entries):
    keep, prod = [], 1
    for j, a in enumerate(axes):
      if shape[i] % (prod * axis_sizes[a]):
        dropped += [b for b in axes[j:] if axis_sizes[b] > 1]
        keep += [b for b in axes[j:] if axis_sizes[b] == 1]
        break
      keep.append(a)
      prod *= axis_sizes[a]
    entries[i] = tuple(keep)
  for a in dropped:
    free = [i for i, axes in enumerate(entries)
            if not any(axis_sizes[b] > 1 for b in axes) and shape[i] % axis_sizes[a] == 0]
    if free:
      i = max(free, key=lambda i: shape[i])
      entries[i] = entries[i] + (a,)
  out = [None if not e else e[0] if len(e) == 1 else e for e in entries]
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def bytes_per_device(boxed_tree, axis_sizes: Mapping[str, int], rules=LOGICAL_AXIS_RULES) -> int:
  """Bytes one device holds of a boxed (nn.Partitioned) abstract tree laid out by
  `rules` and `fit_spec` on a mesh of `axis_sizes` (full sizes, ICI x DCN)."""
  specs = nn.logical_to_mesh(logical_specs(boxed_tree), list(rules))
  leaves = jax.tree.leaves(unboxed(boxed_tree))
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P) or x is None)
  if len(spec_leaves) != len(leaves):
    raise ValueError(f"{len(spec_leaves)} partition specs for {len(leaves)} arrays")
  total = 0
  for spec, x in zip(spec_leaves, leaves):
    shape = tuple(x.shape)
    fitted = fit_spec(spec if spec is not None else P(), shape, axis_sizes)
    split = int(np.prod([axis_sizes[a] for e in fitted for a in entry_axes(e)] or [1]))
    total += int(np.prod(shape or (1,))) * np.dtype(x.dtype).itemsize // split
  return total


def fit_mesh_config(mesh_config: Mapping[str, int], devices_per_slice: int, dcn: Sequence[int],
                    boxed_tree, rules=LOGICAL_AXIS_RULES) -> tuple[dict, Optional[str]]:
  """(mesh_config, reason): the ICI split between `data` and `fsdp` for `boxed_tree`.

  Only when `fsdp` is -1 (take the devices left): an fsdp axis wider than some of
  the params' dimensions replicates them (`fit_spec`; SigLIP's 1152 = 2^7 x 9 over
  fsdp=256 on a v6e-256 / v5e-256 slice: 4.6 GiB of fp32 params and Adam moments
  on every chip). Every split data=k*data, fsdp=F/k (k dividing F, the size fsdp
  would take) is scored by the bytes one device then holds of the tree
  (`bytes_per_device`); the smallest wins, ties going to the widest fsdp. The
  batch still splits over data x fsdp (same rows per device); params are
  replicated over `data` only, and their gradients all-reduced over it, as
  MaxText's ici_data x ici_fsdp. Returns the config unchanged and None when fsdp
  is not -1 or the widest fsdp is already the best; else explicit sizes and a
  one-line reason naming both splits and their bytes.
  """
  cfg = dict(mesh_config)
  if int(cfg.get("fsdp", 1)) != -1:
    return cfg, None
  data, fsdp, tensor = mesh_shape(cfg, devices_per_slice)
  dcn_sizes = dict(zip(MESH_AXES, dcn))

  def cost(k):
    ici = {"data": data * k, "fsdp": fsdp // k, "tensor": tensor}
    return bytes_per_device(boxed_tree, {a: ici[a] * dcn_sizes[a] for a in MESH_AXES}, rules)

  costs = {k: cost(k) for k in range(1, fsdp + 1) if fsdp % k == 0}
  best = min(costs, key=lambda k: (costs[k], k))
  if best == 1:
    return cfg, None
  cfg.update(data=data * best, fsdp=fsdp // best)
  return cfg, (f"mesh: data={data * best} x fsdp={fsdp // best} instead of data={data} x fsdp={fsdp}: "
               f"fsdp={fsdp} does not divide some params' dimensions (replicated over it), so the "
               f"state takes {_size(costs[1])} per device against {_size(costs[best])} "
               f"(sharding.fit_mesh_config; set config.mesh.fsdp to choose)")


def _size(b: int) -> str:
  """Bytes in the largest of GiB, MiB, KiB that reads >= 0.1."""
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
    if b >= scale / 10:
      return f"{b / scale:.2f} {unit}"
  return f"{b / 2**10:.2f} KiB"


def _norm(spec) -> tuple:
  out = [entry_axes(e) for e in tuple(spec)]
  while out and not out[-1]:
    out.pop()
  return tuple(out)


def fit_shardings(shardings, shapes, mesh: Mesh):
  """`fit_spec` applied to a tree of NamedShardings and the arrays (or
  ShapeDtypeStructs) they place; logs how many arrays it changed."""
  sizes = dict(mesh.shape)
  changed = []

  def fit(s, x):
    spec = fit_spec(s.spec, x.shape, sizes)
    if _norm(spec) != _norm(s.spec):
      changed.append(f"{tuple(x.shape)}: {s.spec} -> {spec}")
      return NamedSharding(s.mesh, spec)
    return s

  out = jax.tree.map(fit, shardings, shapes)
  if changed:
    log.info("%d arrays do not divide by their mesh axes and were re-laid out (e.g. %s)",
             len(changed), "; ".join(sorted(set(changed))[:3]))
  return out


def replicated(mesh: Mesh) -> NamedSharding:
  """The same whole array on every device of `mesh`."""
  return NamedSharding(mesh, P())


def axis_rules(rules=LOGICAL_AXIS_RULES):
  """Context manager activating the rules for `nn.with_logical_constraint`."""
  return nn.logical_axis_rules(list(rules))
