"""The one Orbax layer: every checkpoint the package writes or reads goes through here.

Two kinds of checkpoint, one module (no other module imports `orbax`; a test
checks it):

- parameter checkpoints (converted weights, exported runs), with the model config
  written alongside (below);
- a training run's steps, `<workdir>/checkpoints/<step>/{state, data, layout}`
  (`RunCheckpoints`: Orbax's CheckpointManager, used by `train.checkpointing`,
  which owns the policy: finiteness, damaged steps, data positions), and the params
  alone of one of its steps (`restore_run_params`, how stage 2, `generate
  --checkpoint WORKDIR` and `convert export-run` start).

Parameter checkpoints, the layout training, inference and the converters agree on:

  ORBAX_DIR/                 an Orbax (v1) PyTree checkpoint of the params
    state/ ...               tensorstore data, one array per leaf
    _CHECKPOINT_METADATA     holds our metadata as Orbax `custom_metadata`
    showo2_jax.json          the same metadata, for humans and non-JAX tools

The metadata says what the tree is (`kind`: showo2 | qwen2 | siglip | wan_vae),
the config needed to rebuild the model (so no other file is needed to load it),
whether decoder layers are stacked (`scan_layers`), and, for converted
checkpoints, what the PyTorch source looked like (key order, dtypes, config
files), so that writing it back out reproduces the source exactly.

Restoring takes target shardings (or a mesh, from which the model's logical-axis
shardings are derived): Orbax then reads every array straight into its shards,
each host reading only the slices its devices own.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import jax
import numpy as np

from showo2_jax import param_mapping, paths, sharding

log = logging.getLogger(__name__)

KINDS = ("showo2", "qwen2", "siglip", "wan_vae")
FORMAT = "showo2-jax/params"
FORMAT_VERSION = 1
SIDECAR = "showo2_jax.json"
# Host bytes buffered per Orbax write / read while converting. Orbax holds about
# two more copies while it writes, so the peak is ~3x this (or 3x the largest leaf).
DEFAULT_CHUNK_BYTES = 256 << 20
# Storage chunks on disk: a host restoring a shard reads only the chunks it overlaps.
STORAGE_CHUNK_BYTES = 32 << 20


def is_orbax_dir(path: str) -> bool:
  """Whether `path` (local or gs://) is a folder holding one of our param checkpoints
  (the sidecar, or Orbax's own metadata file)."""
  return paths.isdir(path) and any(paths.exists(paths.join(path, m))
                                   for m in (SIDECAR, "_CHECKPOINT_METADATA"))


class OrbaxCheckpointError(ValueError):
  """A directory that is not one of our param checkpoints, or does not fit a target."""


def _ocp():
  # Imported lazily: orbax pulls in tensorstore and friends, which `--help` must not pay for.
  import orbax.checkpoint.experimental.v1 as ocp  # pylint: disable=import-outside-toplevel
  return ocp


def _ocp_v0():
  """Orbax's CheckpointManager API (training runs are written with it)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp


def _save_context():
  """Chunked storage (see STORAGE_CHUNK_BYTES), zstd-compressed as Orbax's default."""
  ocp = _ocp()
  ctx = ocp.Context()
  ctx.array.saving.storage_options = ocp.options.ArrayOptions.Saving.StorageOptions(
      chunk_byte_size=STORAGE_CHUNK_BYTES)
  return ctx


def barrier(name: str, timeout_s: float) -> None:
  """Blocks until every jax process reaches the barrier `name` (unique per use), through
  the distributed client's coordination service (no device collective); raises after
  `timeout_s` seconds. A no-op in one process. Used by `train.distributed.barrier`."""
  from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel
  multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def _trim_heap() -> None:
  """Hands freed memory back to the OS. Tensorstore's writer threads free their
  buffers into glibc arenas that would otherwise stay resident between chunks."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to do
    pass


# --------------------------------------------------------------------- metadata
def config_to_dict(config: Any) -> dict:
  if isinstance(config, Mapping):
    return json.loads(json.dumps(dict(config)))
  if dataclasses.is_dataclass(config):
    return json.loads(json.dumps(dataclasses.asdict(config)))
  raise TypeError(f"config must be a dataclass or a dict, got {type(config).__name__}")


def config_from_dict(kind: str, d: Mapping[str, Any]):
  """The typed config of a `kind` from its stored dict."""
  from showo2_jax.models import config as model_config  # pylint: disable=import-outside-toplevel
  if kind == "showo2":
    return model_config.Showo2Config.from_config_dict(d)
  if kind == "qwen2":
    return model_config.Qwen2Config(**d)
  if kind == "siglip":
    return model_config.SiglipConfig(**d)
  if kind == "wan_vae":
    from showo2_jax.vae.wan import WanVAEConfig  # pylint: disable=import-outside-toplevel
    return WanVAEConfig(**d)
  raise OrbaxCheckpointError(f"unknown checkpoint kind '{kind}' (known: {', '.join(KINDS)})")


def make_meta(kind: str, config: Any, *, scan_layers: bool = False,
              source: Optional[dict] = None) -> dict:
  if kind not in KINDS:
    raise ValueError(f"unknown checkpoint kind '{kind}' (known: {', '.join(KINDS)})")
  meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
          "config": config_to_dict(config), "scan_layers": bool(scan_layers)}
  if source:
    meta["source"] = source
  return meta


def read_meta(path: str) -> dict:
  """Our metadata of the checkpoint at `path` (Orbax custom metadata, else the sidecar)."""
  path = paths.as_str(path)
  if not paths.isdir(path):
    raise OrbaxCheckpointError(f"{path}: no such Orbax checkpoint directory")
  meta = None
  orbax_meta = paths.join(path, "_CHECKPOINT_METADATA")
  if paths.exists(orbax_meta):
    with paths.open(orbax_meta) as f:
      meta = (json.load(f) or {}).get("custom_metadata")
  if not meta and paths.exists(paths.join(path, SIDECAR)):
    with paths.open(paths.join(path, SIDECAR)) as f:
      meta = json.load(f)
  if not meta or meta.get("format") != FORMAT:
    raise OrbaxCheckpointError(
        f"{path}: not a showo2-jax param checkpoint (no '{FORMAT}' metadata; "
        "write one with `showo2-jax convert to-orbax` or orbax_io.save_params)")
  if meta.get("version", 0) > FORMAT_VERSION:
    raise OrbaxCheckpointError(f"{path}: metadata version {meta['version']} is newer than this code")
  return meta


def stored_leaves(path: str) -> dict[str, Any]:
  """Flat {'a/b/c': Orbax leaf metadata (shape, dtype)} of the stored tree."""
  return param_mapping.flatten(_ocp().metadata(paths.as_str(path)).metadata)


def _write_sidecar(path: str, meta: dict) -> None:
  if jax.process_index() == 0:
    with paths.open(paths.join(path, SIDECAR), "w") as f:
      json.dump(meta, f, indent=1)


def _clear(path: str, overwrite: bool) -> None:
  partial = path + ".partial_save"
  if paths.exists(path):
    if not overwrite:
      raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    paths.remove(path)
  if paths.exists(partial):  # a conversion that died half-way
    log.warning("removing the unfinished partial save %s", partial)
    paths.remove(partial)


# ----------------------------------------------------------------------- saving
def save_params(path: str, params: Mapping, config: Any, kind: str = "showo2", *,
                scan_layers: Optional[bool] = None, source: Optional[dict] = None,
                overwrite: bool = False) -> None:
  """Saves a whole param tree (numpy or jax arrays, sharded ones included).

  Call on every process of a multi-host job, like any Orbax save. `config` is a
  Showo2Config (or Qwen2Config / SiglipConfig / WanVAEConfig for the partial
  kinds) or its dict; `scan_layers` defaults to `config.scan_layers` when there is
  one, and must describe `params` (stacked decoder layers or `layers_{i}`).
  """
  if scan_layers is None:
    scan_layers = bool(getattr(config, "scan_layers", None) or
                       (isinstance(config, Mapping) and config.get("scan_layers")))
  meta = make_meta(kind, config, scan_layers=scan_layers, source=source)
  path = paths.as_str(path)
  if paths.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
  with _save_context():  # Orbax replaces an existing checkpoint collectively, across hosts
    _ocp().save(path, dict(params), overwrite=overwrite, custom_metadata=meta)
  _write_sidecar(path, meta)


class ParamWriter:
  """Writes a param tree leaf by leaf, holding at most `chunk_bytes` in memory.

  Leaves are buffered and flushed as Orbax partial saves; `close()` finalizes the
  checkpoint (atomically renamed into place) and writes the sidecar. Used by the
  converters so that a checkpoint larger than RAM never sits in memory whole.
  With `overwrite`, an existing checkpoint at `path` stays untouched until the new
  one is complete (written beside it as `path.replacing`, then swapped in), so a
  conversion that fails leaves the old one as it was.
  """

  def __init__(self, path: str, meta: dict, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
               overwrite: bool = False):
    self.final_path = paths.as_str(path)
    replacing = paths.exists(self.final_path)
    if replacing and not overwrite:
      raise FileExistsError(f"{self.final_path} already exists (pass overwrite=True / --overwrite "
                            "to replace it)")
    # Orbax's partial saves need a file system that renames (not an object store):
    # a URI output is assembled in a local temp folder and uploaded once complete.
    self.remote_path = None
    if paths.is_uri(self.final_path):
      self.remote_path = self.final_path
      self._staging = tempfile.mkdtemp(prefix="showo2_jax_convert_")
      self.final_path = os.path.join(self._staging, paths.name(self.remote_path))
      replacing = False
    self.path = self.final_path + ".replacing" if replacing else self.final_path
    self.meta = meta
    self.chunk_bytes = int(chunk_bytes)
    self._pending: dict[str, np.ndarray] = {}
    self._pending_bytes = 0
    self._saves = 0
    self.leaves = 0
    self.bytes = 0
    _clear(self.path, overwrite=True)

  def add(self, flat_path: str, array: np.ndarray) -> None:
    array = np.asarray(array)
    if self._pending and self._pending_bytes + array.nbytes > self.chunk_bytes:
      self.flush()  # a large leaf goes out alone rather than on top of a full buffer
    self._pending[flat_path] = array
    self._pending_bytes += array.nbytes
    self.leaves += 1
    self.bytes += array.nbytes
    if self._pending_bytes >= self.chunk_bytes:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    tree = param_mapping.unflatten(self._pending)
    log.info("writing %d leaves (%.1f MB) to %s", len(self._pending), self._pending_bytes / 1e6, self.path)
    with _save_context():
      _ocp().partial.save(self.path, tree, custom_metadata=self.meta if self._saves == 0 else None)
    self._saves += 1
    self._pending, self._pending_bytes = {}, 0
    del tree
    _trim_heap()

  def close(self) -> None:
    self.flush()
    if self._saves == 0:
      raise OrbaxCheckpointError(f"{self.path}: nothing to write (empty param tree)")
    _ocp().partial.finalize(self.path)
    _write_sidecar(self.path, self.meta)
    if self.path != self.final_path:  # complete: now swap it in for the old one
      old = self.final_path + ".old"
      paths.remove(old)
      paths.rename(self.final_path, old)
      paths.rename(self.path, self.final_path)
      paths.remove(old)
      self.path = self.final_path
    if self.remote_path is not None:
      log.info("uploading %s to %s", self.final_path, self.remote_path)
      paths.remove(self.remote_path)
      paths.copy_from_local(self.final_path, self.remote_path)
      shutil.rmtree(self._staging, ignore_errors=True)
      self.path = self.final_path = self.remote_path

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *unused):
    if exc_type is None:
      self.close()
    else:  # leave nothing half-written behind (and an overwritten checkpoint as it was)
      paths.remove(self.path + ".partial_save")
      if self.path != self.final_path:
        paths.remove(self.path)
      if self.remote_path is not None:
        shutil.rmtree(self._staging, ignore_errors=True)


# -------------------------------------------------------------------- restoring
def model_shardings(kind: str, config, mesh, *, scan_layers: bool = False):
  """Shardings of a kind's param tree on `mesh`, from the model's logical axis names.

  Partial kinds get the shardings of their subtree of the full model, so a
  stage-1 init restores with the same layout as the model it is merged into.
  """
  from showo2_jax.convert import showo2_torch  # pylint: disable=import-outside-toplevel
  from showo2_jax.models import config as model_config  # pylint: disable=import-outside-toplevel
  if kind == "wan_vae":
    return None  # replicated; see _abstract_tree
  try:
    full = model_config.model_config_for(kind, config, scan_layers)
  except ValueError:
    raise OrbaxCheckpointError(f"unknown checkpoint kind '{kind}'") from None
  shardings = sharding.mesh_shardings(showo2_torch.abstract_params(full), mesh)
  if kind in model_config.KIND_SUBTREES:
    return {g: shardings[g] for g in model_config.KIND_SUBTREES[kind]}
  return shardings


def _flat_shardings(shardings, stored: Mapping[str, Any], path: str) -> dict:
  """One sharding per stored leaf; a tree that does not fit is an error naming the leaves."""
  from jax.sharding import Sharding  # pylint: disable=import-outside-toplevel
  if isinstance(shardings, Sharding):
    return {k: shardings for k in stored}
  flat = param_mapping.flatten(shardings)
  missing = sorted(set(stored) - set(flat))
  unexpected = sorted(set(flat) - set(stored))
  if missing or unexpected:
    hint = ("; decoder layers are stacked in this checkpoint" if any("/layers/" in k for k in stored)
            else "; decoder layers are unrolled (layers_N) in this checkpoint")
    raise param_mapping.KeyMismatchError(missing, unexpected,
                                       source=f"{path} (target shardings{hint})")
  return flat


def restore_params(path: str, shardings=None, *, mesh=None, dtype=None, kind: Optional[str] = None):
  """Restores (kind, config, params) from a checkpoint written by this module.

  `kind`: the kind the caller needs; another raises OrbaxCheckpointError.

  - no `shardings`/`mesh`: params are host numpy arrays, in their stored dtypes;
  - `shardings`: a tree of `jax.sharding.Sharding` matching the stored tree (or
    one Sharding for every leaf): each array is read directly into its shards;
  - `mesh`: shardings derived from the model's logical axis names on that mesh
    (wan_vae: replicated).
  `dtype` casts while reading (e.g. float32 master weights from a bf16 file).
  `config` is typed: Showo2Config, Qwen2Config, SiglipConfig or WanVAEConfig.
  """
  path = paths.as_str(path)
  meta = read_meta(path)
  if kind is not None and meta["kind"] != kind:
    raise OrbaxCheckpointError(f"{path}: an Orbax '{meta['kind']}' checkpoint, expected '{kind}'")
  kind, scan = meta["kind"], bool(meta.get("scan_layers", False))
  config = config_from_dict(kind, meta["config"])
  stored = stored_leaves(path)
  if shardings is None and mesh is not None:
    shardings = model_shardings(kind, config, mesh, scan_layers=scan)
    if shardings is None:
      shardings = sharding.replicated(mesh)
  ocp = _ocp()
  if shardings is None:
    params = ocp.load(path, param_mapping.unflatten(stored))
    if dtype is not None:
      params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    return kind, config, params
  flat_shardings = _flat_shardings(shardings, stored, path)
  abstract = {}
  for k, m in stored.items():
    abstract[k] = jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(dtype or m.dtype), sharding=flat_shardings[k])
  return kind, config, ocp.load(path, param_mapping.unflatten(abstract))


def load_partial(path: str) -> tuple[str, dict, dict]:
  """(kind, config dict, params subtree as numpy) of a checkpoint, for merging.

  A `qwen2` checkpoint holds `{'showo': ...}` and a `siglip` one
  `{'und_trans': ..., 'position_embedding': ...}`: top-level names of the full
  Show-o2 param tree, so initialising stage 1 is `params.update(subtree)` (check
  shapes against the model first: `expected_shapes(config)`).
  """
  kind, _, params = restore_params(path)
  return kind, read_meta(path)["config"], params


def load_leaves(path: str, flat_paths, stored: Optional[Mapping[str, Any]] = None) -> dict:
  """Reads only the listed leaves (flat paths) as host numpy arrays."""
  ocp = _ocp()
  stored = stored_leaves(path) if stored is None else stored
  wanted = {p: stored[p] for p in flat_paths}
  ctx = ocp.Context()
  ctx.pytree.loading.partial_load = True
  with ctx:
    tree = ocp.load(paths.as_str(path), param_mapping.unflatten(wanted))
  _trim_heap()
  flat = param_mapping.flatten(tree)
  return {p: flat[p] for p in wanted}


# ------------------------------------------------------------------ training runs
# Orbax writes this file last in a step dir: a step without it never finished saving.
STEP_METADATA = "_CHECKPOINT_METADATA"


class RunCheckpoints:
  """A training run's checkpoints dir: Orbax's CheckpointManager with the items
  `state` (a TrainState pytree, sharded), `data` (Grain's per-process iterator
  state) and `layout` (a small JSON dict). Saves are asynchronous when `async_save`;
  unfinished saves are cleaned up on start (`cleanup_tmp_directories`)."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
    import grain  # pylint: disable=import-outside-toplevel
    ocp = _ocp_v0()
    self.directory = paths.as_str(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=int(keep) if keep else None,
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "layout": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def save(self, step: int, state, *, data=None, layout: Optional[dict] = None,
           force: bool = False) -> bool:
    """`data`: an object with `get_state()` (bytes or a JSON-able dict), saved with
    Grain's handler. Raises what Orbax raises (also a failure of the previous save)."""
    import grain  # pylint: disable=import-outside-toplevel
    ocp = _ocp_v0()
    args = {"state": ocp.args.StandardSave(state)}
    if data is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data)
    if layout is not None:
      args["layout"] = ocp.args.JsonSave(layout)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state=None, *, data=None, layout: bool = False) -> dict:
    """The items asked for: `state` into `abstract_state`'s shapes, dtypes and
    shardings; `data` restored into the iterator `data`; `layout` (a dict)."""
    import grain  # pylint: disable=import-outside-toplevel
    ocp = _ocp_v0()
    args = {}
    if abstract_state is not None:
      args["state"] = ocp.args.StandardRestore(abstract_state)
    if data is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data)
    if layout:
      args["layout"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    return {k: out[k] for k in args}

  def reload(self) -> None:
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def find_step_dir(path: str) -> tuple[str, Optional[int]]:
  """`path` = a run's workdir, its checkpoints dir, or one step dir -> (checkpoints dir, step)."""
  path = paths.as_str(path)
  base = paths.name(path)
  if base.isdigit() and paths.isdir(paths.join(path, "state")):
    return paths.parent(path), int(base)
  for candidate in (paths.join(path, "checkpoints"), path):
    if paths.isdir(candidate) and any(d.isdigit() for d in paths.listdir(candidate)):
      return candidate, None
  raise FileNotFoundError(f"no checkpoints under {path}")


def _run_state_dir(path: str) -> str:
  """The `state` item of `path`'s step (or its newest complete step)."""
  directory, step = find_step_dir(path)
  if step is None:
    steps = sorted(int(d) for d in paths.listdir(directory)
                   if d.isdigit() and paths.exists(paths.join(directory, d, STEP_METADATA)))
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    step = steps[-1]
  return paths.join(directory, str(step), "state")


def restore_run_params(path: str, abstract: Any) -> Any:
  """Only the params of a saved TrainState, into `abstract`'s shapes, dtypes and shardings.

  `path` is a run's workdir, its checkpoints dir (latest complete step) or a step
  dir. Optimizer state, step and data position are left behind.
  """
  ocp = _ocp_v0()
  item_dir = _run_state_dir(path)
  target = {"params": abstract}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  log.info("params restored from %s", item_dir)
  return out["params"]


def run_params_shapes(path: str) -> dict[tuple, tuple]:
  """{param path tuple: shape} stored in `path`'s step (newest if not a step dir),
  read from the metadata only."""
  directory, step = find_step_dir(path)
  if step is None:
    step = max(int(d) for d in paths.listdir(directory) if d.isdigit())
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  # Orbax looks for a step-level _CHECKPOINT_METADATA inside the item dir and warns
  # that it "does not exist" on every run (the file lives one level up); the item's
  # own metadata, which is what is read here, is there.
  absl_log.setLevel(logging.ERROR)
  try:
    with _ocp_v0().PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(paths.join(directory, str(step), "state"))
  finally:
    absl_log.setLevel(level)
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
  stored = {}

  def walk(node, prefix):
    if hasattr(node, "keys") and not hasattr(node, "shape"):
      for k in node.keys():
        walk(node[k], prefix + (k,))
    else:
      stored[prefix] = tuple(getattr(node, "shape", ()) or ())
  if hasattr(tree, "keys") and "params" in tree.keys():
    walk(tree["params"], ())
  return stored
