"""`showo2-jax check-parity DIR`: compare with golden outputs of the original.

DIR is a directory in the format of `shared/fixtures/showo2` (Show-o2 forward
cases, plus `sampling.npz` with the original's inference loops when present) or
of `shared/fixtures/wan_vae` (VAE encode/decode). One line per output with its
relative error; exit status 1 if any error reaches its threshold.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

from showo2_jax.cli.main import CliError


def add_arguments(parser):
  parser.add_argument("fixture_dirs", nargs="+", metavar="DIR", help="fixture directories to check")


def detect_kind(path: str) -> str:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise CliError(f"{path}: not a directory")
  if not os.path.exists(cfg_path):
    raise CliError(f"{path}: no config.json; not a fixture directory")
  with open(cfg_path) as f:
    cfg = json.load(f)
  if "z_dim" in cfg:
    return "wan_vae"
  if "llm_vocab_size" in cfg or "hidden_size" in cfg:
    return "showo2"
  raise CliError(f"{path}: config.json is neither a Show-o2 nor a Wan VAE config")


RUNNERS = {
    # kind -> [(module, function, file that must exist)]
    "showo2": [("showo2_jax.parity.showo2", "run_showo2_parity", "cases.npz"),
               ("showo2_jax.parity.sampling", "run_sampling_parity", "sampling.npz")],
    "wan_vae": [("showo2_jax.parity.wan_vae", "run_wan_vae_parity", "cases.npz")],
}


def check_dir(path: str) -> tuple[int, int]:
  """Prints one line per output; returns (checked, failed)."""
  kind = detect_kind(path)
  checked = failed = 0
  for module_name, fn_name, needed in RUNNERS[kind]:
    if not os.path.exists(os.path.join(path, needed)):
      continue
    try:
      fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
      print(f"[{kind}] {needed}: cannot be checked in this build ({e})")
      failed += 1
      continue
    for name, err, threshold in fn(path):
      ok = err < threshold
      checked += 1
      failed += not ok
      print(f"[{kind}] {name:<32} rel_err={err:.3e}  threshold={threshold:.0e}  {'ok' if ok else 'FAIL'}")
  if checked == 0 and failed == 0:
    raise CliError(f"{path}: nothing to check (no cases.npz / sampling.npz)")
  return checked, failed


def run(args) -> int:
  total = failed = 0
  for path in args.fixture_dirs:
    c, f = check_dir(path)
    total, failed = total + c, failed + f
  print(f"{total - failed} passed, {failed} failed")
  sys.stdout.flush()
  return 1 if failed else 0
