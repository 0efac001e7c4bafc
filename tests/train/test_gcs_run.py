"""`--workdir gs://bucket/run` on a real GCS API (the emulator, started by the test).

The run writes its config, checkpoints, metrics.jsonl and TensorBoard events into
the bucket and nothing on local disk; kill -9 and a restart resume from the
bucket with bit-identical next losses; SIGTERM then saves and exits 143.
"""
import signal
import subprocess
import time

from showo2_jax import paths
from tests import gcs_emulator as emulator
from tests.train import runs

KEYS = ("loss", "ntp_loss", "flow_loss", "grad_norm", "param_norm")
NEVER = "--config.train.num_steps=100000"


def _start(workdir, cwd, log, host, *extra):
  env = runs.env()
  env.update({k: v for k, v in emulator.environ(host).items() if k == "STORAGE_EMULATOR_HOST"})
  for k in emulator.DERIVED_ENV:
    env.pop(k, None)
  return subprocess.Popen(runs.train_cmd(workdir, "--config.train.log_every=1", NEVER, *extra),
                          env=env, cwd=cwd, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _metrics(workdir):
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    return []
  import json  # pylint: disable=import-outside-toplevel
  rows = []
  for line in paths.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return rows


def _complete_steps(workdir):
  d = paths.join(workdir, "checkpoints")
  if not paths.exists(d):
    return []
  return sorted(int(s) for s in paths.listdir(d)
                if s.isdigit() and paths.exists(paths.join(d, s, "commit_success.txt")))


def _wait_for(predicate, proc, timeout, what, log):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n"
                           + log.read_text(errors="replace")[-3000:])
    time.sleep(1.0)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}")


def test_gs_workdir_kill9_resume_and_sigterm(gcs_emulator, gcs_bucket, tmp_path):
  _, host = gcs_emulator
  workdir = gcs_bucket + "/run"
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  log = tmp_path / "log.txt"
  a = _start(workdir, cwd, log, host, "--config.checkpoint.every_steps=4",
             "--config.checkpoint.keep=3")
  resume_from = 4
  _wait_for(lambda: resume_from in _complete_steps(workdir)
            and max((r["step"] for r in _metrics(workdir) if "loss" in r), default=0) >= 7,
            a, 400, "checkpoint 4 and step 7 in the bucket", log)
  a.kill()
  a.wait(30)
  for later in _complete_steps(workdir):
    if later > resume_from:
      paths.remove(paths.join(workdir, "checkpoints", str(later)))
  rows_a = _metrics(workdir)
  before = {r["step"]: r for r in rows_a if "loss" in r}
  killed_at = max(before)

  b = _start(workdir, cwd, log, host, "--config.checkpoint.every_steps=100000")
  b_rows = lambda: {r["step"]: r for r in _metrics(workdir)[len(rows_a):] if "loss" in r}
  _wait_for(lambda: max(b_rows(), default=0) > killed_at, b, 400, "the restart to pass A", log)
  b.send_signal(signal.SIGTERM)
  assert b.wait(120) == 143, log.read_text(errors="replace")[-3000:]

  text = log.read_text(errors="replace")
  assert f"restored step {resume_from} from {workdir}/checkpoints" in text, text[-2000:]
  resumed = b_rows()
  assert min(resumed) == resume_from + 1
  for step in range(resume_from + 1, killed_at + 1):
    for key in KEYS:
      assert resumed[step][key] == before[step][key], (step, key)
  stopped_at = max(resumed)
  assert _complete_steps(workdir)[-1] == stopped_at           # SIGTERM's checkpoint, in the bucket
  names = paths.listdir(workdir)
  assert {"config.json", "metrics.jsonl", "checkpoints"} <= set(names), names
  assert any(n.startswith("events.out.tfevents.") for n in names), names   # TensorBoard
  assert list(cwd.iterdir()) == []                            # nothing local (no ./gs:/)
