"""Preemption of a 2-process run (jax.distributed) whose workdir is gs:// (emulator).

jax's preemption sync point is what makes the hosts agree: SIGTERM reaches jax's
own notifier (no Python handler replaces it under jax.distributed), the notice is
shared through the coordination service, and every host saves the same step and
exits 143.
  A. SIGTERM to process 1 only -> both processes save step S1 and exit 143.
  B. the same command resumes from S1 (in the bucket); then SIGTERM to both,
     0.5 s apart -> both save the same S2 and exit 143.
  R. the same command, uninterrupted past S1 + 3, in another folder of the
     bucket: B's steps S1+1..S1+3 equal R's bit for bit.
"""
import re
import signal
import socket
import time

import pytest

from tests.train import gcs_runs, runs

KEYS = ("loss", "ntp_loss", "flow_loss", "grad_norm", "param_norm")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(workdir, host, tmp_path, tag, num_steps=100000):
  port = _free_port()
  logs = [tmp_path / f"{tag}{i}.txt" for i in range(2)]
  procs = [gcs_runs.start(workdir, host, tmp_path / "cwd", logs[i], *runs.LOGGED,
                          f"--config.train.num_steps={num_steps}",
                          "--config.checkpoint.every_steps=100000",
                          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}", "--config.mesh.data=2")
           for i in range(2)]
  return procs, logs


def _preempted_step(log) -> int:
  found = re.findall(r"preempted: checkpoint of step (\d+) written", log.read_text(errors="replace"))
  assert len(found) == 1, log.read_text(errors="replace")[-3000:]
  return int(found[0])


def _stop(procs, logs, signals):
  """Sends (process index, delay) SIGTERMs; -> (exit codes, seconds until all exited)."""
  t0 = time.time()
  for i, delay in signals:
    time.sleep(delay)
    procs[i].send_signal(signal.SIGTERM)
  try:
    codes = [p.wait(timeout=180) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return codes, time.time() - t0


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_hosts_save_the_same_step_on_sigterm_to_one_or_both(gcs_emulator, gcs_bucket,
                                                                 tmp_path):
  _, host = gcs_emulator
  workdir = gcs_bucket + "/run"

  procs, logs = _start_pair(workdir, host, tmp_path, "a")
  gcs_runs.wait_for(lambda: max(gcs_runs.logged(gcs_runs.metric_rows(workdir)), default=0) >= 4,
                    procs, 500, "step 4", logs)
  codes, seconds = _stop(procs, logs, [(1, 0.0)])
  assert codes == [143, 143], (codes, logs[0].read_text()[-2000:], logs[1].read_text()[-2000:])
  s1 = _preempted_step(logs[0])
  assert _preempted_step(logs[1]) == s1
  assert gcs_runs.complete_steps(workdir) == [s1]
  print(f"SIGTERM to one host: both exited 143 after {seconds:.1f} s, checkpoint {s1}")

  rows_a = gcs_runs.metric_rows(workdir)
  procs, logs = _start_pair(workdir, host, tmp_path, "b")
  b_rows = lambda: gcs_runs.logged(gcs_runs.metric_rows(workdir)[len(rows_a):])
  gcs_runs.wait_for(lambda: max(b_rows(), default=0) >= s1 + 3, procs, 500, f"step {s1 + 3}",
                    logs)
  codes, seconds = _stop(procs, logs, [(0, 0.0), (1, 0.5)])
  assert codes == [143, 143], (codes, logs[0].read_text()[-2000:], logs[1].read_text()[-2000:])
  s2 = _preempted_step(logs[0])
  assert _preempted_step(logs[1]) == s2 and s2 > s1
  assert gcs_runs.complete_steps(workdir) == [s1, s2]
  print(f"SIGTERM to both 0.5 s apart: both exited 143 after {seconds:.1f} s, checkpoint {s2}")

  assert f"restored step {s1}" in logs[0].read_text(errors="replace")
  resumed = b_rows()
  assert min(resumed) == s1 + 1

  # The same command (num_steps shapes the lr schedule) in a fresh folder, never
  # interrupted before step S1 + 3.
  reference = gcs_bucket + "/uninterrupted"
  procs, logs = _start_pair(reference, host, tmp_path, "r")
  gcs_runs.wait_for(lambda: max(gcs_runs.logged(gcs_runs.metric_rows(reference)), default=0)
                    >= s1 + 3, procs, 500, f"step {s1 + 3} uninterrupted", logs)
  codes, _ = _stop(procs, logs, [(1, 0.0)])
  assert codes == [143, 143], logs[0].read_text()[-2000:]
  uninterrupted = gcs_runs.logged(gcs_runs.metric_rows(reference))
  for step in range(s1 + 1, s1 + 4):
    for key in KEYS:
      assert resumed[step][key] == uninterrupted[step][key], (step, key)
  assert list((tmp_path / "cwd").iterdir()) == []
