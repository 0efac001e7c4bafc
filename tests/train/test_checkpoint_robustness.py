"""What a restart does with what a crash left (local folder and gs:// alike):
stale tmp saves are removed, a damaged newer step is skipped with one warning and
kept aside, the newest good step is restored, and NaN/Inf params are never saved."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax import paths
from showo2_jax.train import checkpointing
from showo2_jax.train.state import TrainState


def _state(value: float, step: int) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32),
                    params={"w": jnp.full((64, 16), value), "b": jnp.arange(3.0)},
                    opt_state={"mu": jnp.zeros((64, 16))}, rng=jnp.zeros((2,), jnp.uint32))


def _abstract() -> TrainState:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0, 0))


def _checkpointer(root):
  return checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                    async_save=False)


def _save_steps(root, steps):
  ckpt = _checkpointer(root)
  for s in steps:
    ckpt.save(s, _state(float(s), s), None, force=True)
  ckpt.close()


def _remove_data_files(step_dir):
  """What a lost or truncated upload leaves: the state item without its array data."""
  state = paths.join(step_dir, "state")
  removed = paths.glob(paths.join(state, "d", "*")) + paths.glob(
      paths.join(state, "ocdbt.process_*", "d", "*"))
  assert removed, paths.listdir(state)
  for f in removed:
    paths.remove(f)


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "run")
  return request.getfixturevalue("gcs_bucket") + "/run"


@pytest.mark.parametrize("damage", ["missing_data_file", "no_commit_metadata"])
def test_damaged_newest_step_is_skipped_kept_aside_and_older_restored(root, damage, caplog):
  _save_steps(root, [2, 3])
  step3 = paths.join(root, "checkpoints", "3")
  if damage == "missing_data_file":
    _remove_data_files(step3)
  else:
    paths.remove(paths.join(step3, checkpointing.STEP_METADATA))

  ckpt = _checkpointer(root)
  with caplog.at_level(logging.WARNING, logger="showo2_jax.train.checkpointing"):
    state, step = ckpt.restore_latest(_abstract())
  ckpt.close()
  assert step == 2
  np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((64, 16), 2.0))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.name == checkpointing.log.name]
  assert len(warnings) == 1, warnings
  assert step3 in warnings[0] and "\n" not in warnings[0]
  assert ("_CHECKPOINT_METADATA" if damage == "no_commit_metadata" else "Error") in warnings[0]
  aside = paths.join(root, "checkpoints" + checkpointing.DAMAGED_SUFFIX, "3")
  assert paths.isdir(aside) and not paths.exists(step3)   # kept, out of the way
  assert "state" in paths.listdir(aside)


def test_stale_tmp_save_is_removed_at_start(tmp_path):
  root = str(tmp_path / "run")
  _save_steps(root, [2])
  stale = paths.join(root, "checkpoints", "4.orbax-checkpoint-tmp-1234567")
  paths.write_text(paths.join(stale, "state", "partial"), "cut by kill -9")
  ckpt = _checkpointer(root)
  state, step = ckpt.restore_latest(_abstract())
  ckpt.save(5, state, None, force=True)   # the cleanup finishes before any save
  ckpt.close()
  assert step == 2
  assert paths.listdir(paths.join(root, "checkpoints")) == ["2", "5"]


def test_unfinished_gcs_save_is_removed_at_start(gcs_bucket):
  """On GCS a step is finished when its commit_success.txt is written (Orbax)."""
  root = gcs_bucket + "/run"
  _save_steps(root, [2, 3])
  paths.remove(paths.join(root, "checkpoints", "3", "commit_success.txt"))
  ckpt = _checkpointer(root)
  _, step = ckpt.restore_latest(_abstract())
  ckpt.save(4, _state(4.0, 4), None, force=True)
  ckpt.close()
  assert step == 2
  assert paths.listdir(paths.join(root, "checkpoints")) == ["2", "4"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_params_are_never_saved(tmp_path, bad):
  root = str(tmp_path / "run")
  ckpt = _checkpointer(root)
  ckpt.save(1, _state(1.0, 1), None, force=True)
  state = _state(1.0, 2)
  state = state.replace(params={**state.params, "b": state.params["b"].at[1].set(bad)})
  with pytest.raises(checkpointing.NonFiniteParamsError, match="step 2"):
    ckpt.save(2, state, None, force=True)
  ckpt.close()
  assert paths.listdir(paths.join(root, "checkpoints")) == ["1"]


class _Position:
  """A data iterator whose state is a position (what grain's handler saves)."""

  def __init__(self, position=0):
    self.position = position

  def get_state(self):
    return {"position": self.position}

  def start_prefetch(self):
    pass

  def set_state(self, state):
    self.position = (json.loads(state) if isinstance(state, (str, bytes)) else state)["position"]


@pytest.mark.parametrize("changed,expected", [
    ({"process_count": 2}, "number of processes (hosts) = 1, this run has 2: "),
    ({"num_workers": 0}, "--config.data.num_workers = 4, this run has 0: "),
])
def test_restart_of_an_older_per_process_data_state_with_another_layout_is_one_line(
    tmp_path, changed, expected):
  """Steps saved without `elastic` in their layout (an older version's per-process
  Grain state) need the settings they were saved with."""
  root = str(tmp_path / "run")
  layout = {"process_count": 1, "num_workers": 4}
  ckpt = checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                    async_save=False, layout=layout)
  ckpt.save(6, _state(6.0, 6), _Position(48), force=True)
  ckpt.close()

  same = checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                    async_save=False, layout=layout)
  it = _Position()
  _, step = same.restore_latest(_abstract(), it)
  same.close()
  assert (step, it.position) == (6, 48)

  other = checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                     async_save=False, layout={**layout, **changed})
  with pytest.raises(checkpointing.DataLayoutError) as e:
    other.restore_latest(_abstract(), _Position())
  other.close()
  message = str(e.value)
  assert expected in message and "\n" not in message, message
  assert "--config.init.from_checkpoint=" in message and "to resume, " in message
  assert paths.listdir(paths.join(root, "checkpoints")) == ["6"]   # not set aside


def test_elastic_data_position_restores_under_another_process_and_worker_count(root, caplog):
  """A global data position (`elastic` layout) saved by 2 processes (simulated: the
  files of processes 0 and 1 of 2) is read from process 0's file by this 1-process
  run with another worker count, on a local disk and on gs:// alike."""
  layout = {"process_count": 2, "num_workers": 4, "elastic": True}
  ckpt = checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                    async_save=False, layout=layout)
  ckpt.save(6, _state(6.0, 6), _Position(48), force=True)
  ckpt.close()
  data = paths.join(root, "checkpoints", "6", "data")
  paths.rename(paths.join(data, "process_0-of-1.json"), paths.join(data, "process_0-of-2.json"))
  paths.write_text(paths.join(data, "process_1-of-2.json"), json.dumps({"position": 48}))

  other = checkpointing.Checkpointer(paths.join(root, "checkpoints"), every_steps=1, keep=5,
                                     async_save=False, layout={**layout, "process_count": 1,
                                                               "num_workers": 0})
  it = _Position()
  with caplog.at_level(logging.WARNING):
    state, step = other.restore_latest(_abstract(), it)
  other.close()
  assert (step, it.position) == (6, 48)
  assert float(state.params["w"][0, 0]) == 6.0
  assert "process_0-of-2.json" in caplog.text and "continues at the same sample" in caplog.text
