"""Launching `showo2-jax train` in subprocesses and reading back their losses.

Device counts and jax.distributed are fixed per process, so the reference, the
8-device/2-process and the kill -9 tests each run the CLI in fresh interpreters.

What keeps them cheap (the whole tests/train folder must stay ~3 min on 2 cores):
- compilation is nearly all of a tiny run's time, so the subprocesses compile
  with XLA's CPU backend optimisations off (`FAST_XLA_FLAGS`: about half the
  compile time; codegen only, and every run that is compared uses the flags);
- they share a persistent compilation cache, so a program compiled once is
  reused by every later process (the restarted run of the resume test);
- `shared_run` runs the reference once per session even under pytest-xdist,
  whose workers would otherwise each run their own copy.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
COMPILE_CACHE = os.environ.get("SHOWO2_TEST_COMPILE_CACHE", "/tmp/showo2_jax_test_compile_cache")
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The same, per program, for tests that compile in the (shared) pytest process.
FAST_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_llvm_disable_expensive_passes": True}

# Every step logged to metrics.jsonl, no TensorBoard (its tensorflow import costs
# seconds), checkpoints only where a test asks for them.
LOGGED = ("--config.train.log_every=1", "--config.train.tensorboard=false")
# The reference: tiny_train's 300-step learning run, 1 process, 1 device, every step
# logged. Its first steps are what the 8-device, 2-process run must give.
REFERENCE_STEPS = 300
REFERENCE = ("--config.train.log_every=1", f"--config.train.num_steps={REFERENCE_STEPS}",
             "--config.checkpoint.every_steps=100", "--config.checkpoint.keep=2")
# A short run compared with the reference's first steps (only the final checkpoint).
SHORT_STEPS = 6
SHORT_RUN = LOGGED + (f"--config.train.num_steps={SHORT_STEPS}",
                      "--config.checkpoint.every_steps=100000")


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_XLA_FLAGS}"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  e["TF_CPP_MIN_LOG_LEVEL"] = "3"
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  return e


def train_cmd(workdir, *extra, config: str = "tiny_train") -> list[str]:
  return [sys.executable, "-m", "showo2_jax.cli.main", "train", "--config", config,
          "--workdir", str(workdir), *extra]


def start(workdir, *extra, devices: int = 1, log_name: str = "log.txt",
          config: str = "tiny_train") -> subprocess.Popen:
  Path(workdir).mkdir(parents=True, exist_ok=True)
  log = open(Path(workdir) / log_name, "ab")
  return subprocess.Popen(train_cmd(workdir, *extra, config=config), env=env(devices), stdout=log,
                          stderr=subprocess.STDOUT, cwd=REPO)


def run(workdir, *extra, devices: int = 1, timeout: float = 400,
        config: str = "tiny_train") -> dict[int, dict]:
  proc = start(workdir, *extra, devices=devices, config=config)
  rc = proc.wait(timeout=timeout)
  assert rc == 0, f"train exited {rc}; log:\n{log_tail(workdir)}"
  return read_metrics(workdir)


def shared_run(workdir: Path, make: Callable[[Path], None]) -> Path:
  """Runs `make(workdir)` once across all processes of a test session.

  Under xdist, `workdir` must be in the directory every worker shares (the parent
  of a worker's basetemp); the first worker to get here runs it while the others
  wait on the lock, then all read the finished directory.
  """
  workdir = Path(workdir)
  done = workdir.parent / (workdir.name + ".done")
  workdir.parent.mkdir(parents=True, exist_ok=True)
  with open(workdir.parent / (workdir.name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not done.exists():
        if workdir.exists():           # a failed attempt of another worker: start over
          shutil.rmtree(workdir)
        make(workdir)
        done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return workdir


def session_root(tmp_path_factory) -> Path:
  """A directory shared by all xdist workers of this session (the basetemp without xdist)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def metric_rows(workdir) -> list[dict]:
  """Every line of metrics.jsonl in order (a resumed run appends to the same file)."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    with contextlib.suppress(json.JSONDecodeError):   # a line cut by kill -9
      if line.strip():
        rows.append(json.loads(line))
  return rows


def read_metrics(workdir) -> dict[int, dict]:
  """step -> metrics; a step logged twice (before a kill and after) keeps the last."""
  return {row["step"]: row for row in metric_rows(workdir) if "loss" in row}


def checkpoint_steps(workdir) -> list[int]:
  """Complete checkpoints (orbax renames a step dir into place only when it is whole)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def log_tail(workdir, name: str = "log.txt", chars: int = 4000) -> str:
  path = Path(workdir) / name
  return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def losses(metrics: dict[int, dict], key: str = "loss", steps=None) -> list[float]:
  return [metrics[s][key] for s in (sorted(metrics) if steps is None else steps)]
