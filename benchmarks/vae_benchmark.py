"""Time and peak memory of the full-size Wan2.1 VAE (random weights) on this machine.

Every measurement runs in its own subprocess, so `ru_maxrss` (peak resident memory of
that process: params, JAX runtime, activations) belongs to that one operation. Compile
time comes from JAX's monitoring events; "run" is the rest of the call's wall time.

  python benchmarks/vae_benchmark.py                  # the default table
  python benchmarks/vae_benchmark.py --cases image432 clip17x432 --timeout 1800
  python benchmarks/vae_benchmark.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# name -> (frames, height, width, description)
SHAPES = {
    "image432": (1, 432, 432, "432x432 image"),
    "image1024": (1, 1024, 1024, "1024x1024 image"),
    "clip5x432": (5, 432, 432, "5-frame 432x432 clip"),
    "clip17x432": (17, 432, 432, "17-frame 432x432 clip"),
}
# op -> description; "tiled" ops use 32-latent (256 px) tiles with an 8-latent overlap.
OPS = {
    "encode": "encode",
    "decode": "decode",
    "decode_tiled": "decode, tiled 256px/64px",
    "encode_tiled": "encode, tiled 256px/64px",
}
DEFAULT = ["image432:encode", "image432:decode", "image432:decode_tiled",
           "image1024:encode_tiled", "image1024:decode_tiled", "image1024:decode",
           "clip5x432:encode", "clip5x432:decode", "clip17x432:encode", "clip17x432:decode_tiled"]


def _measure(case: str) -> dict:
  """Runs one `shape:op` in this process and returns its numbers."""
  import resource  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from showo2_jax.vae import tiling, wan  # pylint: disable=g-import-not-at-top

  shape_name, op = case.split(":")
  frames, height, width, _ = SHAPES[shape_name]
  cfg = wan.WanVAEConfig()
  params = jax.device_put(wan.init_params(jax.random.PRNGKey(0), cfg))
  rng = np.random.default_rng(0)
  if op.startswith("encode"):
    x = rng.uniform(-1, 1, (1, 3, frames, height, width)).astype(np.float32)
  else:
    t_lat = 1 + (frames - 1) // cfg.temporal_factor
    x = rng.standard_normal((1, cfg.z_dim, t_lat, height // 8, width // 8)).astype(np.float32)
  events: dict[str, float] = {}

  def listener(name, seconds, **_):
    events[name] = events.get(name, 0.0) + seconds

  jax.monitoring.register_event_duration_secs_listener(listener)
  start = time.perf_counter()
  if op == "encode":
    out = wan.encode_posterior(params, x, cfg)[0]
  elif op == "encode_tiled":
    out = tiling.encode_posterior_tiled(params, x, cfg)[0]
  elif op == "decode":
    out = wan.decode_video(params, x, cfg)
  else:
    out = tiling.decode_video_tiled(params, x, cfg)
  out = np.asarray(jax.block_until_ready(out))
  total = time.perf_counter() - start
  compile_s = sum(v for k, v in events.items() if k.startswith("/jax/core/compile/"))
  return {"case": case, "total_s": total, "compile_s": compile_s, "run_s": total - compile_s,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "out_shape": list(out.shape), "finite": bool(np.isfinite(out).all())}


def _run_in_subprocess(case: str, timeout: float) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", case]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"case": case, "error": f"not finished within {timeout:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  return {"case": case, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}


def _describe(case: str) -> str:
  shape_name, op = case.split(":")
  return f"{SHAPES[shape_name][3]}, {OPS[op]}"


def _table(rows: list[dict]) -> str:
  lines = ["| case | total s | compile s | run s | peak RSS GiB | output |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {_describe(r['case'])} | - | - | - | - | {r['error']} |")
    else:
      lines.append(f"| {_describe(r['case'])} | {r['total_s']:.1f} | {r['compile_s']:.1f} | "
                   f"{r['run_s']:.1f} | {r['peak_rss_gib']:.2f} | "
                   f"{'x'.join(map(str, r['out_shape']))} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="*", default=DEFAULT, help="shape:op pairs")
  parser.add_argument("--timeout", type=float, default=1200, help="seconds per case")
  parser.add_argument("--list", action="store_true", help="list shapes and ops")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(_measure(args.child)), flush=True)
    return 0
  if args.list:
    print("shapes:", ", ".join(SHAPES), "\nops:", ", ".join(OPS))
    return 0
  for case in args.cases:
    shape_name, _, op = case.partition(":")
    if shape_name not in SHAPES or op not in OPS:
      parser.error(f"unknown case '{case}' (shapes: {', '.join(SHAPES)}; ops: {', '.join(OPS)})")
  print(f"# Wan2.1 VAE (dim 96, 126.9M params, random weights), float32, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
  rows = []
  for case in args.cases:
    rows.append(_run_in_subprocess(case, args.timeout))
    print(json.dumps(rows[-1]), flush=True)
  print(_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
