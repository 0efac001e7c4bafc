"""`showo2-jax check-parity DIR`: compare with golden outputs of the original.

DIR is a directory in the format of `shared/fixtures/showo2` (Show-o2 forward
cases, plus `sampling.npz` with the original's inference loops when present) or
of `shared/fixtures/wan_vae` (VAE encode/decode). One line per output with its
relative error; exit status 1 if any error reaches its threshold.

`--bf16 DIR`: a directory written by `shared/bench/bf16_reference.py` (`showo2/` +
`ref_outputs.npz`, optionally `ref_sampling.npz`); see `showo2_jax.parity.bf16`.
Ours runs in bf16 with the RoPE `inv_freq` quirk off and on; per case and output it
prints our relative error to the fp32 truth, the original's (arithmetic-only) error,
their ratio, and our distance (quirk on) to the original's as-scripted bf16 output.
Exit status 1 if a ratio exceeds 1.1 or a quirk-on distance exceeds twice the
original's arithmetic-only error. XLA's CPU backend runs with
--xla_allow_excess_precision=false, so it rounds every bf16 intermediate as a TPU does.
"""
from __future__ import annotations

import json
import os
import sys

from showo2_jax.cli.main import CliError


NO_EXCESS_PRECISION = "--xla_allow_excess_precision=false"


def add_arguments(parser):
  parser.add_argument("fixture_dirs", nargs="+", metavar="DIR", help="fixture directories to check")
  parser.add_argument("--bf16", action="store_true",
                      help="DIRs are bf16_reference.py outputs: check our bfloat16 numerics against "
                           "the original's bf16 runs")
  parser.add_argument("--skip-sampling", action="store_true",
                      help="with --bf16: skip ref_sampling.npz (the 8-step T2I run)")


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


def runners(kind: str) -> list:
  """kind -> [(parity function, fixture file it needs)]; imported here, not at the
  top, so that `showo2-jax --help` does not load JAX and the models."""
  # pylint: disable=import-outside-toplevel
  from showo2_jax.parity import sampling, showo2, wan_vae
  return {"showo2": [(showo2.run_showo2_parity, "cases.npz"),
                     (sampling.run_sampling_parity, "sampling.npz")],
          "wan_vae": [(wan_vae.run_wan_vae_parity, "cases.npz")]}[kind]


def check_dir(path: str) -> tuple[int, int]:
  """Prints one line per output; returns (checked, failed)."""
  kind = detect_kind(path)
  checked = failed = 0
  for fn, needed in runners(kind):
    if not os.path.exists(os.path.join(path, needed)):
      continue
    for name, err, threshold in fn(path):
      ok = err < threshold
      checked += 1
      failed += not ok
      print(f"[{kind}] {name:<32} rel_err={err:.3e}  threshold={threshold:.0e}  {'ok' if ok else 'FAIL'}")
  if checked == 0 and failed == 0:
    raise CliError(f"{path}: nothing to check (no cases.npz / sampling.npz)")
  return checked, failed


def check_bf16_dir(path: str, sampling: bool = True) -> tuple[int, int]:
  """Prints the bf16 table for one bf16_reference.py directory; returns (checked, failed)."""
  from showo2_jax.parity import bf16  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(path):
    raise CliError(f"{path}: not a directory")
  if not bf16.is_bf16_dir(path):
    raise CliError(f"{path}: no ref_outputs.npz; --bf16 takes directories written by bf16_reference.py")
  print(f"[bf16] {path}: relative errors; ratio = ours / original (max {bf16.MAX_RATIO}); "
        f"quirk-on distance max {bf16.MAX_QUIRK_DISTANCE:g}x original")
  print(bf16.HEADER)
  checked = failed = 0
  for row in bf16.run_bf16_parity(path, sampling=sampling):
    print(bf16.format_row(row))
    sys.stdout.flush()
    checked += row.gated
    failed += not row.ok
  return checked, failed


def _backends_started() -> bool:
  """XLA reads XLA_FLAGS when its first backend starts, not at `import jax`."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True


def _strict_bf16_rounding():
  """Makes XLA's CPU backend round bf16 intermediates (it must happen before jax starts)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_allow_excess_precision" in flags:
    return
  if _backends_started():
    print("[bf16] warning: jax already started; XLA may keep bf16 intermediates in fp32")
    return
  os.environ["XLA_FLAGS"] = (flags + " " + NO_EXCESS_PRECISION).strip()


def run(args) -> int:
  total = failed = 0
  if args.bf16:
    _strict_bf16_rounding()
    for path in args.fixture_dirs:
      c, f = check_bf16_dir(path, sampling=not args.skip_sampling)
      total, failed = total + c, failed + f
    print(f"{total - failed} passed, {failed} failed")
    sys.stdout.flush()
    return 1 if failed else 0
  for path in args.fixture_dirs:
    c, f = check_dir(path)
    total, failed = total + c, failed + f
  print(f"{total - failed} passed, {failed} failed")
  sys.stdout.flush()
  return 1 if failed else 0
