"""`--workdir gs://bucket/run` on a real GCS API (the emulator, started by the test).

The run writes its config, checkpoints, metrics.jsonl and TensorBoard events into
the bucket and nothing on local disk; kill -9 and a restart resume from the
bucket with bit-identical next losses; SIGTERM then saves and exits 143.
"""
import signal

import pytest

from showo2_jax import paths
from tests.train import gcs_runs

KEYS = ("loss", "ntp_loss", "flow_loss", "grad_norm", "param_norm")
NEVER = "--config.train.num_steps=100000"


@pytest.mark.slow
def test_gs_workdir_kill9_resume_and_sigterm(gcs_emulator, gcs_bucket, tmp_path):
  _, host = gcs_emulator
  workdir = gcs_bucket + "/run"
  cwd = tmp_path / "cwd"
  log = tmp_path / "log.txt"
  start = lambda *extra: gcs_runs.start(workdir, host, cwd, log, "--config.train.log_every=1",
                                        NEVER, *extra)
  a = start("--config.checkpoint.every_steps=4", "--config.checkpoint.keep=3")
  resume_from = 4
  gcs_runs.wait_for(lambda: resume_from in gcs_runs.complete_steps(workdir)
                    and max(gcs_runs.logged(gcs_runs.metric_rows(workdir)), default=0) >= 7,
                    [a], 400, "checkpoint 4 and step 7 in the bucket", [log])
  a.kill()
  a.wait(30)
  for later in gcs_runs.complete_steps(workdir):
    if later > resume_from:
      paths.remove(paths.join(workdir, "checkpoints", str(later)))
  rows_a = gcs_runs.metric_rows(workdir)
  before = gcs_runs.logged(rows_a)
  killed_at = max(before)

  b = start("--config.checkpoint.every_steps=100000")
  b_rows = lambda: gcs_runs.logged(gcs_runs.metric_rows(workdir)[len(rows_a):])
  gcs_runs.wait_for(lambda: max(b_rows(), default=0) > killed_at, [b], 400,
                    "the restart to pass A", [log])
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
  assert gcs_runs.complete_steps(workdir)[-1] == stopped_at           # SIGTERM's checkpoint, in the bucket
  names = paths.listdir(workdir)
  assert {"config.json", "metrics.jsonl", "checkpoints"} <= set(names), names
  assert any(n.startswith("events.out.tfevents.") for n in names), names   # TensorBoard
  assert list(cwd.iterdir()) == []                            # nothing local (no ./gs:/)


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_failed_gs_save_is_one_line(tmp_path):
  """A plain `gcp-storage-emulator` (no x-goog-generation header) makes Orbax's save
  fail; `train` exits 1 with one line naming the checkpoint dir and the cause, and
  none of Orbax's logged tracebacks."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  port = _free_port()
  plain = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host",
                            "127.0.0.1", "--port", str(port), "--in-memory",
                            "--default-bucket", "bucket"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    time.sleep(3)
    log = tmp_path / "log.txt"
    run = gcs_runs.start("gs://bucket/run", f"http://127.0.0.1:{port}", tmp_path / "cwd", log,
                         "--config.train.num_steps=1")
    assert run.wait(400) == 1
  finally:
    plain.terminate()
    plain.wait(30)
  out = log.read_text()
  # (Known, not fixed: a tensorstore callback racing Orbax's closed event loop may
  # still print a traceback of its own, sometimes quoting the same tensorstore error;
  # so this checks our one error line and the absence of Orbax's logged tracebacks,
  # not that nothing else mentions the cause.)
  assert "ERROR absl" not in out and "_SignalingThread" not in out, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith("showo2-jax train: error:")]
  assert len(errors) == 1, out[-3000:]
  assert errors[0].startswith(
      "showo2-jax train: error: checkpoint save to gs://bucket/run/checkpoints failed:")
  assert "Malformed StorageGeneration" in errors[0] and "tensorstore_spec" not in errors[0]
