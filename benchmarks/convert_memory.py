"""Peak memory of `showo2-jax convert` on a 1.5B-sized random Show-o2 checkpoint.

Not a test (it writes ~17 GB and takes minutes). It builds a random checkpoint
with the exact tensor names and shapes of the released 1.5B model (2.83B
parameters with the SigLIP semantic layers and the flow head), streaming, in
bf16 by default (5.7 GB; --dtype float32 for 11.3 GB), then runs each step of
the conversion in its own process and reports its peak resident memory:

  to-orbax   original shards -> Orbax
  to-torch   Orbax -> PyTorch shards (--format: bin as the CLI's default, or safetensors)
  verify     source vs Orbax, and written output vs Orbax (bit-exactness)

Peak RSS is the process's own high-water mark (VmHWM in /proc, file-backed
pages of the memory-mapped source included; wait4's ru_maxrss is not used as it
keeps the parent's RSS at fork across exec); peak anonymous memory (what the
process allocated itself) is sampled from /proc every 50 ms.

  python benchmarks/convert_memory.py --workdir /tmp/convert_bench
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import ml_dtypes
import numpy as np

from showo2_jax.convert import checkpoint_io, pipeline, plan as plan_lib
from showo2_jax.models.config import SHOWO2_1P5B


class RandomTensor:
  """A tensor generated only when the safetensors writer asks for it."""

  def __init__(self, seed: int, shape: tuple, dtype):
    self.seed, self.shape, self.dtype = seed, shape, np.dtype(dtype)

  def __array__(self, dtype=None, copy=None):
    del copy
    rng = np.random.default_rng(self.seed)
    x = rng.standard_normal(math.prod(self.shape), dtype=np.float32).reshape(self.shape) * 0.02
    return x.astype(dtype or self.dtype)


def build_checkpoint(root: str, dtype, max_shard_bytes: int) -> int:
  """Writes config files and sharded weights as the original saves them; returns bytes."""
  os.makedirs(root, exist_ok=True)
  config = SHOWO2_1P5B
  for name, d in zip(("config.json", "llm_config.json", "siglip_config.json"), config.to_original_json()):
    with open(os.path.join(root, name), "w") as f:
      json.dump(d, f, indent=2)
  plan = plan_lib.build("showo2", config)
  keys = plan.default_keys()  # with the tied lm_head, as the original's state_dict
  seeds = {k: i for i, k in enumerate(keys)}
  tensors = {}
  for k in keys:
    source = plan.aliases.get(k, k)  # a tied copy must equal the embedding
    tensors[k] = RandomTensor(seeds[source], plan.entry(k).shape, dtype)
  sizes = {k: math.prod(t.shape) * t.dtype.itemsize for k, t in tensors.items()}
  shards = pipeline.group_into_shards(keys, sizes, max_shard_bytes)
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    print(f"  writing {name} ({len(shard)} tensors)", flush=True)
    checkpoint_io.save_safetensors({k: tensors[k] for k in shard}, os.path.join(root, name),
                                   metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
  with open(os.path.join(root, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, f, indent=2)
  return sum(sizes.values())


def _status_kb(pid: int, field: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def measure(argv: list[str]) -> dict:
  """Runs argv; returns seconds and its peak RSS / sampled peak anonymous RSS."""
  start = time.time()
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  peak = {"VmHWM": 0, "RssAnon": 0}
  done = threading.Event()

  def sample():
    while not done.is_set():
      for field in peak:
        peak[field] = max(peak[field], _status_kb(proc.pid, field))
      time.sleep(0.05)
  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  output = proc.stdout.read()
  done.set()  # the process is about to exit: its stdout closed
  thread.join()
  proc.wait()
  return {"rc": proc.returncode, "seconds": round(time.time() - start, 1),
          "peak_rss_gb": round(peak["VmHWM"] * 1024 / 1e9, 3),
          "peak_anon_gb": round(peak["RssAnon"] * 1024 / 1e9, 3), "tail": output.strip().splitlines()[-3:]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/convert_bench")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--max-shard-size", type=float, default=2e9, help="source shards (bytes)")
  parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
  parser.add_argument("--reuse", action="store_true", help="reuse a source built by an earlier --keep run")
  parser.add_argument("--chunk-size", default="256MiB", help="passed to to-orbax / to-torch")
  parser.add_argument("--format", default="bin", choices=("bin", "safetensors"),
                      help="passed to to-torch")
  args = parser.parse_args()
  dtype = ml_dtypes.bfloat16 if args.dtype == "bfloat16" else np.float32
  src, ox, out = (os.path.join(args.workdir, d) for d in ("source", "orbax", "torch"))
  for d in (ox, out):
    shutil.rmtree(d, ignore_errors=True)
  if args.reuse and os.path.isdir(src):
    with checkpoint_io.StateDict(src) as sd:
      nbytes = sum(math.prod(sd.shape(k)) * sd.dtype(k).itemsize for k in sd.keys())
  else:
    shutil.rmtree(src, ignore_errors=True)
    print(f"building a 1.5B-sized random checkpoint ({args.dtype}) in {src}", flush=True)
    t = time.time()
    nbytes = build_checkpoint(src, dtype, int(args.max_shard_size))
    print(f"  {nbytes / 1e9:.2f} GB in {time.time() - t:.0f} s", flush=True)
  cli = [sys.executable, "-m", "showo2_jax.cli.main", "convert"]
  steps = {
      "baseline (imports only)": [sys.executable, "-c",
                                  "import showo2_jax.convert.pipeline, orbax.checkpoint.experimental.v1"],
      "to-orbax": cli + ["to-orbax", "--torch", src, "--out", ox, "--chunk-size", args.chunk_size],
      "to-torch": cli + ["to-torch", "--orbax", ox, "--out", out, "--chunk-size", args.chunk_size,
                         "--format", args.format],
      "verify source": cli + ["verify", "--torch", src, "--orbax", ox],
      "verify output": cli + ["verify", "--torch", out, "--orbax", ox],
  }
  results = {}
  for name, argv in steps.items():
    print(f"running {name} ...", flush=True)
    results[name] = r = measure(argv)
    print(f"  rc={r['rc']} {r['seconds']} s, peak RSS {r['peak_rss_gb']} GB, "
          f"peak anonymous {r['peak_anon_gb']} GB", flush=True)
    for line in r["tail"]:
      print("   |", line)
  print(json.dumps({"checkpoint_gb": round(nbytes / 1e9, 3), "dtype": args.dtype,
                    "steps": {k: {f: v for f, v in r.items() if f != "tail"} for k, r in results.items()}},
                   indent=1))
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)
  return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
