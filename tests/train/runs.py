"""Launching `showo2-jax train` in subprocesses and reading back their losses.

Device counts and jax.distributed are fixed per process, so the sharding,
multi-process and kill -9 tests each run the CLI in fresh interpreters. They
share a persistent compilation cache, so programs compiled once are reused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPILE_CACHE = os.environ.get("SHOWO2_TEST_COMPILE_CACHE", "/tmp/showo2_jax_test_compile_cache")

# A short, fully logged tiny run: every step's losses land in metrics.jsonl.
SHORT_RUN = ("--config.train.num_steps=12", "--config.train.log_every=1",
             "--config.checkpoint.every_steps=4", "--config.checkpoint.keep=5",
             "--config.train.tensorboard=false")


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  e["TF_CPP_MIN_LOG_LEVEL"] = "3"
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  return e


def train_cmd(workdir, *extra, config: str = "tiny_train") -> list[str]:
  return [sys.executable, "-m", "showo2_jax.cli.main", "train", "--config", config,
          "--workdir", str(workdir), *SHORT_RUN, *extra]


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


def read_metrics(workdir) -> dict[int, dict]:
  """step -> metrics; a step logged twice (before a kill and after) keeps the last."""
  path = Path(workdir) / "metrics.jsonl"
  out = {}
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        row = json.loads(line)
        out[row["step"]] = row
  return out


def log_tail(workdir, name: str = "log.txt", chars: int = 4000) -> str:
  path = Path(workdir) / name
  return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def losses(metrics: dict[int, dict], key: str = "loss") -> list[float]:
  return [metrics[s][key] for s in sorted(metrics)]
