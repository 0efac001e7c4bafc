"""A run killed with SIGKILL and restarted continues exactly like an uninterrupted one."""
import os
import signal
import time
from pathlib import Path

from tests.train import runs


def _wait_for(predicate, proc, timeout, what):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}"
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {what}")


def test_kill9_then_restart_gives_identical_losses(tmp_path, reference_metrics):
  workdir = tmp_path / "run"
  ckpt4 = workdir / "checkpoints" / "4"
  proc = runs.start(workdir)
  try:
    # Kill once step 4's checkpoint is complete and a few more steps have run.
    _wait_for(lambda: ckpt4.is_dir() and max(runs.read_metrics(workdir), default=0) >= 6,
              proc, 300, "checkpoint 4 and step 6")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = max(runs.read_metrics(workdir))
  assert killed_at < 12, "the run finished before it could be killed"

  resumed = runs.run(workdir)           # same command: resumes from the latest checkpoint
  log = runs.log_tail(workdir, chars=200_000)
  assert "restored step" in log or "from step 4" in log or "from step 8" in log, log[-2000:]
  for step in range(5, 13):
    for key in ("loss", "ntp_loss", "flow_loss", "grad_norm"):
      assert resumed[step][key] == reference_metrics[step][key], (step, key)
  assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())[-1] == 12


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
  workdir = tmp_path / "run"
  proc = runs.start(workdir, "--config.train.num_steps=100000", "--config.checkpoint.every_steps=100000")
  try:
    _wait_for(lambda: max(runs.read_metrics(workdir), default=0) >= 3, proc, 300, "step 3")
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert rc == 143, runs.log_tail(workdir)
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and steps[0] >= 3, steps
  assert (Path(workdir) / "checkpoints" / str(steps[0]) / "data").is_dir()
