"""Training runs whose workdir is in a bucket of the test's GCS emulator.

The processes get STORAGE_EMULATOR_HOST and nothing else storage-related (what a
user sets); their logs go to a local folder of the test, their cwd is an empty
folder that must stay empty (a `gs:` folder there would mean a local write).
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from showo2_jax import paths
from tests import gcs_emulator as emulator
from tests.train import runs


def start(workdir: str, host: str, cwd: Path, log: Path, *extra, devices: int = 1,
          config: str = "tiny_train") -> subprocess.Popen:
  env = runs.env(devices)
  for k in emulator.DERIVED_ENV:
    env.pop(k, None)
  env["STORAGE_EMULATOR_HOST"] = host
  cwd.mkdir(parents=True, exist_ok=True)
  return subprocess.Popen(runs.train_cmd(workdir, *extra, config=config), env=env, cwd=cwd,
                          stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def metric_rows(workdir: str) -> list[dict]:
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    return []
  rows = []
  for line in paths.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return rows


def logged(rows) -> dict[int, dict]:
  return {r["step"]: r for r in rows if "loss" in r}


def complete_steps(workdir: str) -> list[int]:
  """Steps whose save finished (Orbax writes commit_success.txt last on GCS)."""
  d = paths.join(workdir, "checkpoints")
  if not paths.exists(d):
    return []
  return sorted(int(s) for s in paths.listdir(d)
                if s.isdigit() and paths.exists(paths.join(d, s, "commit_success.txt")))


def wait_for(predicate, procs, timeout: float, what: str, logs) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    for p, log in zip(procs, logs):
      if p.poll() is not None:
        for q in procs:
          q.kill()
        raise AssertionError(f"a run exited ({p.returncode}) before {what}:\n"
                             + Path(log).read_text(errors="replace")[-3000:])
    time.sleep(1.0)
  for q in procs:
    q.kill()
  raise AssertionError(f"timed out waiting for {what}")
