"""Orbax checkpoints of a run: train state + data iterator, async, every N, keep K.

Layout: `<workdir>/checkpoints/<step>/{state, data}`.
- `state`: the TrainState (params, optimizer state, step, rng), each process
  writing its own shards; restored straight into the target shardings.
- `data`: the iterator state, one JSON file per process (grain's handler), so a
  restart reads exactly the batches an uninterrupted run would have read.

Saves are asynchronous: `save` returns once device buffers are copied to host and
writes in the background. A step directory becomes visible only when complete,
so a run killed mid-save (kill -9) restarts from the previous complete step.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import grain
import orbax.checkpoint as ocp

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


class Checkpointer:
  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=int(keep) if keep else None,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Every `every_steps` exactly (orbax alone would also save the first step)."""
    return step % self.every_steps == 0

  def save(self, step: int, state: TrainState, iterator, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator))
    saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    if saved:
      log.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state: TrainState, iterator=None) -> TrainState:
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(iterator)
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    log.info("checkpoint: restored step %d from %s", step, self.directory)
    return out["state"]

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption notice
    (jax's preemption sync point; only active under jax.distributed)."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str, abstract_params: Any) -> Any:
  """Only the params of a saved TrainState, into `abstract_params`' shardings.

  `path` is a run's workdir, its checkpoints dir (latest step) or a step dir. This
  is how stage 2 starts from stage 1: optimizer state, step and data position are
  left behind.
  """
  directory, step = find_step_dir(path)
  if step is None:
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    step = steps[-1]
  item_dir = os.path.join(directory, str(step), "state")
  target = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  log.info("params restored from %s", item_dir)
  return out["params"]


def find_step_dir(path: str) -> tuple[str, Optional[int]]:
  """`path` = a run's workdir, its checkpoints dir, or one step dir -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      return candidate, None
  raise FileNotFoundError(f"no checkpoints under {path}")
