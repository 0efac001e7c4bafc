"""kill -9 then restart continues exactly like an uninterrupted run; SIGTERM saves and exits 143.

One scenario on the pixel path (tiny_train:pixels: the frozen random VAE encodes
every step and is not in the checkpoints), two processes, and nothing that can
race with the end of a run (both are asked for 100000 steps):
  A. train, checkpointing every 4 steps; once step 4's checkpoint is complete and
     step 7 is logged, SIGKILL (possibly in the middle of a later save). Complete
     checkpoints after step 4 are then removed, so that the overlap below is at
     least 3 steps however late the kill landed (a half-written one stays);
  B. the same command (checkpointing only on demand): it must restore the latest
     complete checkpoint (4), data position included, reload the same VAE, and
     log bit for bit the numbers A logged for steps 5.. (A ran them
     uninterrupted); then SIGTERM, which must write a checkpoint of the current
     step and exit with 143.
"""
import ast
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.train import runs

CONFIG = "tiny_train:pixels"
NEVER = "--config.train.num_steps=100000"
KEYS = ("loss", "ntp_loss", "flow_loss", "grad_norm", "param_norm")


def _wait_for(predicate, proc, timeout, what):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}"
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


def _stop(proc, sig, timeout=120) -> int:
  try:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()


def _logged(rows) -> dict[int, dict]:
  return {r["step"]: r for r in rows if "loss" in r}


@pytest.mark.slow
def test_kill9_resumes_exactly_and_sigterm_saves(tmp_path):
  workdir = tmp_path / "run"
  a = runs.start(workdir, *runs.LOGGED, NEVER, "--config.checkpoint.every_steps=4",
                 "--config.checkpoint.keep=3", config=CONFIG)

  resume_from = 4
  try:
    _wait_for(lambda: resume_from in runs.checkpoint_steps(workdir)
              and max(runs.read_metrics(workdir), default=0) >= resume_from + 3,
              a, 300, "checkpoint 4 and step 7")
  except BaseException:
    a.kill()
    raise
  assert _stop(a, signal.SIGKILL, 30) == -signal.SIGKILL
  for later in runs.checkpoint_steps(workdir):
    if later > resume_from:
      shutil.rmtree(workdir / "checkpoints" / str(later))
  rows_a = runs.metric_rows(workdir)
  before_kill = _logged(rows_a)
  killed_at = max(before_kill)

  b = runs.start(workdir, *runs.LOGGED, NEVER, "--config.checkpoint.every_steps=100000",
                 config=CONFIG)
  b_steps = lambda: _logged(runs.metric_rows(workdir)[len(rows_a):])
  try:
    _wait_for(lambda: max(b_steps(), default=0) > killed_at, b, 300, "the restart to pass A")
  except BaseException:
    b.kill()
    raise
  rc = _stop(b, signal.SIGTERM)
  assert rc == 143, runs.log_tail(workdir)

  log = runs.log_tail(workdir, chars=200_000)
  assert f"restored step {resume_from}" in log, log[-2000:]
  assert log.count("VAE: random init (seed 10086)") == 2       # loaded again, not restored
  resumed = b_steps()
  stopped_at = max(resumed)
  assert min(resumed) == resume_from + 1
  for step in range(resume_from + 1, killed_at + 1):
    for key in KEYS:
      assert resumed[step][key] == before_kill[step][key], (step, key)
  assert all(np.isfinite(r["loss"]) for r in resumed.values())

  # SIGTERM: a checkpoint of exactly the step it stopped at (B saves nothing else),
  # holding the train state and the data position, and no VAE.
  assert runs.checkpoint_steps(workdir)[-1] == stopped_at
  step_dir = Path(workdir) / "checkpoints" / str(stopped_at)
  assert (step_dir / "data").is_dir()
  tree = json.loads((step_dir / "state" / "_METADATA").read_text())["tree_metadata"]
  assert {ast.literal_eval(k)[0] for k in tree} == {"step", "params", "opt_state", "rng"}
