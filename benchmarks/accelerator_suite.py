"""The "full sizes" figures of shared/docs/BENCHMARKS.md in one run, one JSON.

    bash benchmarks/accelerator_suite.sh                     # 1.5B, bf16, on a GPU/TPU
    bash benchmarks/accelerator_suite.sh --out suite.json --config tiny \
        --train-config tiny_train --t2i-points 3 --new-tokens 4 --train-steps 1   # CPU check

Random weights in `--dtype` (bfloat16), compilation excluded from every figure:
  * T2I 432 px: seconds per image at each of `--batches` (50-point Euler, CFG,
    KV-cached `sample_latents`, prefill included; batch B = B images);
  * understanding decode: tokens/s at each of `--batches` (greedy, 64 new tokens
    after one image + ~40 prompt tokens per row, prefill excluded);
  * stage-2 train step (`--train-config`, default stage2_1p5b:b: every param but
    the time embedder trains, bf16 compute, fp32 master params, remat, scanned
    layers) at `--train-batch` rows: seconds per step, tokens/s and MFU. MFU =
    model FLOPs / s / peak; model FLOPs from showo2_jax.train.flops (3 x the
    forward matmuls, lm_head over every position, attention over the full L x L);
    peak = the device's dense bf16 rate when known (H100/H200 SXM 989 TFLOP/s,
    A100 312, TPU v5p 459, v5e 197, v4 275) or `--peak-tflops`, and also the
    measured best bf16 GEMM rate of this device.
The JSON is rewritten after every figure, so a crash or timeout keeps what was
measured. Goals on one H100/H200 (the [perf] issue): T2I <= 0.6 s/image at batch
1, decode >= 500 tok/s at batch 1, train >= 50% MFU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import compare_original  # noqa: E402
import inference_benchmark  # noqa: E402
import train_benchmark  # noqa: E402
from showo2_jax.config_lib import load_config  # noqa: E402
from showo2_jax.train import config_overrides  # noqa: E402

# Dense bf16 peak per chip (vendor figures, no sparsity), matched in device_kind.
KNOWN_PEAKS = (("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("A100", 312.0),
               ("TPU v5p", 459.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v4", 275.0),
               ("TPU v6", 918.0))


def known_peak_tflops(device_kind: str):
  for key, peak in KNOWN_PEAKS:
    if key.lower() in device_kind.lower():
      return peak
  return None


def measured_gemm_tflops(dtype, n: int) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e12


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="accelerator_suite.json")
  p.add_argument("--config", default="showo2_1p5b", help="model config of T2I and decode")
  p.add_argument("--train-config", default="stage2_1p5b:b")
  p.add_argument("--dtype", default="bfloat16", help="T2I/decode weights and compute")
  p.add_argument("--batches", default="1,8")
  p.add_argument("--t2i-points", type=int, default=50)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--train-batch", type=int, default=8, help="global batch of the train step")
  p.add_argument("--train-steps", type=int, default=5)
  p.add_argument("--peak-tflops", type=float, default=None, help="default: known for the device")
  p.add_argument("--gemm-size", type=int, default=None, help="default 8192 (accelerator), 1024 (CPU)")
  p.add_argument("--skip", default="", help="comma list of: t2i, decode, train")
  config_overrides.accept_overrides(p)   # --config.X=Y applies to both configs
  args = p.parse_args(argv)
  overrides = list(args.config_overrides or [])
  for flag, name in (("--config", args.config), ("--train-config", args.train_config)):
    config_overrides.load_config_flag(p, flag, name)
  dev = jax.devices()[0]
  on_cpu = dev.platform == "cpu"
  gemm_dtype = jnp.float32 if on_cpu else jnp.bfloat16
  out = dict(machine=dict(platform=dev.platform, device_kind=dev.device_kind, devices=jax.device_count(),
                          host=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                          load_avg_1m=os.getloadavg()[0]),
             settings={k: v for k, v in vars(args).items() if k != "config_overrides"},
             t2i=[], decode=[], train=None)
  out["settings"]["overrides"] = [f"{k}={v}" for k, v in overrides]
  start = time.perf_counter()

  def save():
    out["wall_s"] = time.perf_counter() - start
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)

  gemm = measured_gemm_tflops(gemm_dtype, args.gemm_size or (1024 if on_cpu else 8192))
  peak = args.peak_tflops or known_peak_tflops(dev.device_kind)
  out["peak"] = dict(known_or_given_tflops=peak, measured_gemm_tflops=gemm,
                     measured_gemm_dtype=jnp.dtype(gemm_dtype).name)
  save()
  skip = set(filter(None, args.skip.split(",")))
  batches = [int(b) for b in args.batches.split(",")]
  if not {"t2i", "decode"} <= skip:
    model, params, cfg = compare_original.build_model(args.config, overrides, args.dtype)
    for b in batches if "t2i" not in skip else []:
      s = compare_original.t2i_seconds(model, params, cfg, b, args.t2i_points)
      out["t2i"].append(dict(batch=b, s_per_batch=s, s_per_image=s / b, evals=args.t2i_points - 1,
                             resolution=cfg.resolution))
      print(f"T2I batch {b}: {s / b:.3f} s/image", flush=True)
      save()
    for b in batches if "decode" not in skip else []:
      r = compare_original.decode_rate(model, params, cfg, b, args.new_tokens)
      out["decode"].append(dict(batch=b, **r))
      rate = (inference_benchmark.no_rate(args.new_tokens) if r["tok_per_s"] is None
              else f"{r['tok_per_s']:.1f}")
      print(f"decode batch {b}: {rate} tok/s (prefill {r['prefill_s']:.3f} s)", flush=True)
      save()
    del model, params
  if "train" not in skip:
    config = config_overrides.apply(load_config(args.train_config), overrides)
    config.train.global_batch_size = args.train_batch
    r = train_benchmark.bench(config, args.train_steps)
    r["mfu_vs_measured_gemm"] = r["model_tflops"] / gemm
    r["mfu"] = r["model_tflops"] / peak if peak else None
    r["flop_formula"] = "showo2_jax.train.flops.train_flops_per_step (3 x forward matmul FLOPs)"
    r["config"] = args.train_config
    out["train"] = r
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (no known peak)"
    print(f"train {args.train_config} batch {args.train_batch}: {r['step_s']:.3f} s/step, MFU {mfu}, "
          f"{r['mfu_vs_measured_gemm']:.1%} of the measured GEMM rate", flush=True)
  save()
  print(f"wrote {args.out} ({out['wall_s']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
