"""Orbax checkpoints of a run: train state + data iterator, async, every N, keep K.

Layout: `<workdir>/checkpoints/<step>/{state, data}`.
- `state`: the TrainState (params, optimizer state, step, rng), each process
  writing its own shards; restored straight into the target shardings.
- `data`: the iterator state, one JSON file per process (grain's handler), so a
  restart reads exactly the batches an uninterrupted run would have read.

The checkpoints dir is a local folder or a URI (`gs://bucket/run/checkpoints`);
Orbax marks completion the way each store needs: on a local disk a step is
written as `<step>.orbax-checkpoint-tmp-*` and renamed into place, on GCS it gets
a `commit_success.txt` last.

Saves are asynchronous: `save` returns once device buffers are copied to host and
writes in the background. What a restart does with what it finds:
- unfinished saves (a tmp folder, or a GCS step without `commit_success.txt`,
  left by kill -9) are removed when the Checkpointer starts (Orbax's
  `cleanup_tmp_directories`);
- the newest complete step that restores is used (`restore_latest`); a newer
  step that lacks Orbax's `_CHECKPOINT_METADATA` or fails to restore (a missing
  or damaged file) is moved aside into `<checkpoints>.damaged/<step>` (kept, not
  deleted) with a one-line warning naming it and the reason;
- params with a NaN/Inf are never saved (`NonFiniteParamsError`);
- `layout` (a small JSON item) records the number of processes and data workers
  the step was saved under, and that its data position is elastic: a global
  position (the synthetic batch index, or each stream's global sample index of
  the Grain pipeline), the same in every process's file. The params reshard onto
  any mesh and the data position is read from any process's file, so a restart
  with another number of processes, data workers or mesh continues at the same
  sample. Only a step saved by an older version (per-process Grain state, no
  `elastic` in its layout) still needs the settings it was saved with; changing
  them stops with a one-line `DataLayoutError` saying which setting changed and
  how to go on.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax import paths
from showo2_jax.convert import orbax_io
# A run's params are read outside training too (convert, sample): the Orbax layer owns
# that; these names are kept here for the training code.
from showo2_jax.convert.orbax_io import STEP_METADATA
from showo2_jax.train.state import TrainState

log = logging.getLogger(__name__)


class IteratorSnapshot:
  """The iterator's state at save time; the async writer may run after the loop
  has moved the live iterator on."""

  def __init__(self, iterator):
    state = iterator.get_state()
    # grain's handler writes bytes for anything that is not a grain iterator;
    # a grain iterator's dict state is stored as the JSON it would write itself.
    self._state = state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()

  def get_state(self) -> bytes:
    return self._state


class NonFiniteParamsError(RuntimeError):
  """The params to be saved hold a NaN/Inf; nothing was saved."""


class DataLayoutError(ValueError):
  """The checkpoint's data position was saved under another process/worker count."""


# What the data position of a checkpoint depends on: (key, what the user sets).
LAYOUT_FIELDS = (("process_count", "the number of processes (hosts)"),
                 ("num_workers", "--config.data.num_workers"))


DAMAGED_SUFFIX = ".damaged"
# What Orbax writes into every finalized step dir; a step without it is not one.


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def params_finite(params) -> bool:
  """True if no float leaf of `params` holds a NaN/Inf (one fused reduction, global arrays ok)."""
  return bool(_all_finite(params))


class CheckpointSaveError(Exception):
  """Orbax could not write a checkpoint (storage refused it); one line: the
  checkpoint directory and the cause."""


def _save_error(directory: str, e: BaseException) -> CheckpointSaveError:
  # tensorstore appends its whole JSON spec ("[tensorstore_spec='{...}']") to its errors.
  text = re.sub(r"\s*\[tensorstore_spec=.*$", "", " ".join(str(e).split()), flags=re.S)
  text = text if len(text) <= 400 else text[:400] + "..."
  return CheckpointSaveError(f"checkpoint save to {directory} failed: "
                             f"{type(e).__name__}: {text or type(e).__name__}")


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(e).__name__}: {text}"


def _all_hosts_true(ok: bool) -> bool:
  """`ok` on every process (a restore that failed anywhere failed everywhere)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True,
               layout: Optional[dict] = None):
    """`layout`: what this run's data position depends on (see LAYOUT_FIELDS); saved
    with every step and compared on restore."""
    self.directory = paths.as_str(directory)
    self.layout = dict(layout) if layout else None
    self.every_steps = max(int(every_steps), 1)
    self.manager = orbax_io.RunCheckpoints(self.directory, every_steps=every_steps, keep=keep,
                                           async_save=async_save)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Every `every_steps` exactly (orbax alone would also save the first step)."""
    return step % self.every_steps == 0

  def save(self, step: int, state: TrainState, iterator, *, force: bool = False) -> bool:
    """Saves (asynchronously) if `force` or at every `every_steps`; raises
    NonFiniteParamsError instead if any param is NaN/Inf."""
    if not (force or self.manager.should_save(step)):
      return False
    if not params_finite(state.params):
      raise NonFiniteParamsError(f"params hold NaN/Inf at step {step}; not saved")
    data = IteratorSnapshot(iterator) if iterator is not None else None
    layout = self.layout if iterator is not None else None
    try:  # also raises a failure of the previous (asynchronous) save
      saved = self.manager.save(step, state, data=data, layout=layout, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(self.directory, e) from e
    if saved:
      log.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def saved_layout(self, step: int) -> Optional[dict]:
    """The `layout` item of step `step`, or None if it has none."""
    if not paths.exists(paths.join(self.directory, str(step), "layout")):
      return None
    return self.manager.restore(step, layout=True)["layout"]

  def check_layout(self, step: int) -> None:
    """Raises DataLayoutError if step `step`'s data position is not elastic (an older
    version's per-process state) and was saved under another process or worker
    count than this run's (steps saved without a layout pass)."""
    if self.layout is None:
      return
    saved = self.saved_layout(step)
    if saved is None or saved.get("elastic"):
      return
    step_dir = paths.join(self.directory, str(step))
    for key, setting in LAYOUT_FIELDS:
      if key in saved and key in self.layout and saved[key] != self.layout[key]:
        fix = (f"run on {saved[key]} processes" if key == "process_count"
               else f"pass --config.data.num_workers={saved[key]}")
        raise DataLayoutError(
            f"checkpoint {step_dir} was saved with {setting} = {saved[key]}, this run has "
            f"{self.layout[key]}: the params would reshard but this older per-process data "
            f"position cannot (no sample may repeat or be skipped); to resume, {fix}; or start a "
            f"new --workdir with --config.init.from_checkpoint={step_dir} (the data starts over)")

  def restore(self, step: int, abstract_state: TrainState, iterator=None) -> TrainState:
    out = self.manager.restore(step, abstract_state, data=iterator)
    log.info("checkpoint: restored step %d from %s", step, self.directory)
    return out["state"]

  def step_problem(self, step: int) -> Optional[str]:
    """Why step `step` is not a complete checkpoint, or None (a cheap listing, no read)."""
    step_dir = paths.join(self.directory, str(step))
    if not paths.exists(paths.join(step_dir, STEP_METADATA)):
      return f"no {STEP_METADATA} (the save never finished)"
    if not paths.exists(paths.join(step_dir, "state")):
      return "no state item"
    return None

  def restore_latest(self, abstract_state: TrainState, iterator=None):
    """(state, step) of the newest complete step that restores, or (None, None).

    Newer steps that are incomplete or fail to restore are moved aside
    (`set_aside`), each with a one-line warning; all processes agree on each step.
    """
    for step in sorted(self.all_steps(), reverse=True):
      problem = self.step_problem(step)
      if problem is None and iterator is not None:
        self.check_layout(step)  # a setting to change, not a damaged step: raise
        problem = self._data_problem(step)
      state = None
      if problem is None:
        try:  # a failure here is the files' fault: the state's structure is checked up front
          state = self.manager.restore(step, abstract_state)["state"]
        except Exception as e:  # pylint: disable=broad-except
          problem = _one_line(e)
      if _all_hosts_true(problem is None):
        if iterator is not None:  # errors here are not damage (e.g. another data config): raise
          self.restore_data(step, iterator)
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return state, step
      self.set_aside(step, problem or "failed to restore on another process")
    return None, None

  def _data_file(self, step: int) -> Optional[str]:
    """This process's data state file of step `step`; for an elastic position saved
    under another process count, process 0's (every process saved the same position)."""
    data_dir = paths.join(self.directory, str(step), "data")
    own = paths.join(data_dir, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    if paths.exists(own):
      return own
    saved = self.saved_layout(step) or {}
    if not saved.get("elastic") or not paths.exists(data_dir):
      return None
    first = [f for f in paths.listdir(data_dir) if f.startswith("process_0-of-") and f.endswith(".json")]
    return paths.join(data_dir, first[0]) if first else None

  def restore_data(self, step: int, iterator) -> None:
    """Sets `iterator` to the data position of step `step` (see the module doc)."""
    path = self._data_file(step)
    if path is None:
      raise DataLayoutError(f"checkpoint {paths.join(self.directory, str(step))} has no data "
                            f"position for process {jax.process_index()} of {jax.process_count()}")
    if not path.endswith(f"process_{jax.process_index()}-of-{jax.process_count()}.json"):
      log.warning("checkpoint: data position saved by another number of processes (%s); it is "
               "global, so this run continues at the same sample", paths.name(path))
    text = paths.read_text(path)
    iterator.set_state(json.loads(text) if isinstance(iterator, grain.DatasetIterator)
                       else text.encode())
    if hasattr(iterator, "start_prefetch"):
      iterator.start_prefetch()

  def _data_problem(self, step: int) -> Optional[str]:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = self._data_file(step)
    if path is None:
      data_dir = paths.join(self.directory, str(step), "data")
      counts = {f.rsplit("-of-", 1)[-1][:-len(".json")] for f in
                (paths.listdir(data_dir) if paths.exists(data_dir) else []) if "-of-" in f}
      if counts and str(jax.process_count()) not in counts:  # saved before layouts were recorded
        raise DataLayoutError(
            f"checkpoint {paths.join(self.directory, str(step))} holds the data position of "
            f"{'/'.join(sorted(counts))} processes, this run has {jax.process_count()}: to resume, "
            f"run on that many processes; or start a new --workdir with "
            f"--config.init.from_checkpoint={paths.join(self.directory, str(step))} (the data starts over)")
      return f"no data/{name}"
    try:
      json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
      return f"data/{paths.name(path)} is not JSON ({_one_line(e)})"
    return None

  def set_aside(self, step: int, reason: str) -> str:
    """Moves step `step` into `<checkpoints>.damaged/` (kept for inspection) and warns."""
    src = paths.join(self.directory, str(step))
    dst = paths.join(self.directory + DAMAGED_SUFFIX, str(step))
    if paths.exists(dst):
      dst = f"{dst}-{len(paths.listdir(self.directory + DAMAGED_SUFFIX))}"
    log.warning("checkpoint %s skipped: %s; moved to %s", src, reason, dst)
    if jax.process_index() == 0:
      paths.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"set_aside_{step}")
    self.manager.reload()
    return dst

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption notice
    (jax's preemption sync point; only active under jax.distributed)."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until the pending save is written; CheckpointSaveError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(self.directory, e) from e

  def close(self) -> None:
    self.wait()
    self.manager.close()
