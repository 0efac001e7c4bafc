"""Ours against the original PyTorch Show-o2, on the same machine, in the same run.

    python benchmarks/compare_original.py                              # ours only
    python benchmarks/compare_original.py \
        --reference-python REF/venv/bin/python --reference-code REF/show-o2 --rounds 2

`REF` is what `../shared/bench/setup_reference.sh SHOW_O_SOURCE REF` prepares (the
original's code, a venv that runs it on CPU and a `stub/` for its timm import).
The `small` configuration of shared/docs/BENCHMARKS.md, fp32, random weights:

  * train step: batch 2 x 1024, one 432-px image per row, every parameter
    trainable (stage 2), AdamW, 0.2 * NTP + FM (ours: `small_train`, whose batch is
    ref_bench.py's: the image at offset 34, every text position labelled);
  * T2I: seconds per 432-px image, 50-point Euler grid (49 evaluations), CFG
    (ours: the KV-cached `sample_latents`, prefill included; the original: one
    `t2i_generate` CFG call x 49, as `ref_bench.py` measures it);
  * decode: tokens/s at batch 1 after one image + ~40 prompt tokens (ours: the
    cached `generate`, prefill excluded; the original: `mmu_generate`).

Each round runs our three tasks and then the original's (`ref_bench.py`), each in
its own process, so the two alternate under the same machine load and every
process's peak resident memory (`ru_maxrss`, compilation included for ours) is
its own. Reported per task: the median over rounds and the ratio original/ours
(> 1: ours is faster). MFU of the train step = model FLOPs of
`showo2_jax.train.flops` (3 x forward matmuls) per second / the best fp32 GEMM
rate measured here (the larger of JAX's and PyTorch's), for both.

Times on a shared machine drift; ratios from one run are what to compare. With
`--clock cpu` every figure is process CPU seconds (user + system, all threads)
instead of wall seconds, in both programs (ours and `ref_bench.py` run with
`time.perf_counter` replaced by `time.process_time`): on a machine shared with
other jobs that is the comparison load distorts least (it still counts the
threads' spinning and the cache misses others cause).
`--json` writes everything (rounds, medians, ratios, machine, load).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_REF_BENCH = os.path.join(ROOT, "..", "shared", "bench", "ref_bench.py")
TASKS = ("train", "t2i", "decode")


# ----------------------------------------------------------------- our tasks
# Also used by accelerator_suite.py (any config, dtype and batch).
def build_model(config_name: str, overrides=(), dtype: str = "float32"):
  """(Showo2, random params on the device, config) of a model config in `dtype`."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import inference_benchmark as ib  # pylint: disable=import-outside-toplevel
  from showo2_jax.config_lib import load_config  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.config import Showo2Config  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.showo2 import Showo2  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import config_overrides  # pylint: disable=import-outside-toplevel
  cfg = config_overrides.apply(load_config(config_name), list(overrides))
  config = Showo2Config.from_config_dict(cfg.model).replace(dtype=dtype, param_dtype=dtype)
  return Showo2(config, empty_slots_overwrite_bos=False), ib.random_params(config, jnp.dtype(dtype)), cfg


def t2i_seconds(model, params, cfg, batch: int = 1, points: int = 50, prompt_len: int = 32) -> float:
  """Seconds per batch of `batch` images: KV-cached Euler + CFG over a `points`-point grid,
  prefill included, compilation excluded (one timed call)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import inference_benchmark as ib  # pylint: disable=import-outside-toplevel
  from showo2_jax.flow import transport  # pylint: disable=import-outside-toplevel
  from showo2_jax.sample import prefix, visual  # pylint: disable=import-outside-toplevel
  side = cfg.resolution // 8
  rng = np.random.default_rng(0)
  cond = [[ib.BOS] + list(rng.integers(10, 200, prompt_len)) + [ib.BOI] for _ in range(batch)]
  a = prefix.align(cond + [[ib.BOS, ib.BOI]] * batch, ib.PAD, multiple=32)
  noise = transport.initial_noise(jax.random.PRNGKey(0), (batch, 16, side, side))
  grid = transport.time_grid(points)
  return ib.timed(visual.sample_latents, model, params, a.tokens, a.shift, a.lengths, a.placement,
                  a.attention, None, None, noise, grid, 7.5, budget_s=0.0, max_repeats=1)


def decode_rate(model, params, cfg, batch: int = 1, new_tokens: int = 64, text_len: int = 40) -> dict:
  """Greedy cached decoding after one image + ~`text_len` prompt tokens per row:
  tokens/s over all rows (prefill excluded) and the prefill seconds."""
  import inference_benchmark as ib  # pylint: disable=import-outside-toplevel
  from showo2_jax.sample import decode  # pylint: disable=import-outside-toplevel
  from showo2_jax.sample.tokens import GREEDY  # pylint: disable=import-outside-toplevel
  rest, prompt_tokens = ib.decode_inputs(model, params, cfg, batch, text_len)
  one = ib.timed(decode.generate, *rest, max_new_tokens=1, sampling=GREEDY)
  full = ib.timed(decode.generate, *rest, max_new_tokens=new_tokens, sampling=GREEDY)
  # None when the difference drowns in timing noise (tiny models, few tokens).
  rate = batch * (new_tokens - 1) / (full - one) if full > one else None
  return dict(tok_per_s=rate, prefill_s=one, total_s=full, prompt_tokens=prompt_tokens)


def _ours_train(args) -> dict:
  from showo2_jax.config_lib import load_config  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import config_overrides  # pylint: disable=import-outside-toplevel
  import train_benchmark  # pylint: disable=import-outside-toplevel
  config = config_overrides.apply(load_config(args.train_config), args.overrides)
  r = train_benchmark.bench(config, args.train_steps)
  return dict(train_s_per_step=r["step_s"], train_min_s=r["min_step_s"],
              model_tflop_per_step=r["model_tflop_per_step"], params_m=r["params_m"],
              compile_s=r["compile_and_first_step_s"])


def _ours_t2i(args) -> dict:
  model, params, cfg = build_model(args.config, args.overrides)
  return dict(t2i_s_per_image=t2i_seconds(model, params, cfg, 1, args.t2i_points),
              t2i_evals=args.t2i_points - 1)


def _ours_decode(args) -> dict:
  model, params, cfg = build_model(args.config, args.overrides)
  r = decode_rate(model, params, cfg, 1, args.new_tokens)
  return dict(decode_tok_per_s=r["tok_per_s"], prefill_s=r["prefill_s"], prompt_tokens=r["prompt_tokens"])


def _gemm_peak_jax() -> float:
  import train_benchmark  # pylint: disable=import-outside-toplevel
  return train_benchmark.measured_peak_tflops()


WORKERS = {"train": _ours_train, "t2i": _ours_t2i, "decode": _ours_decode, "gemm": lambda a: {
    "gemm_tflops": _gemm_peak_jax()}}

# The original's GEMM rate, measured by its own PyTorch (same size as ours: 2048^3 fp32).
TORCH_GEMM = """
import json, time, torch
torch.set_num_threads({threads})
a = torch.ones(2048, 2048); a @ a
clock = time.{clock}
best = min((lambda t: (a @ a, clock() - t)[1])(clock()) for _ in range(5))
print(json.dumps({{"gemm_tflops": 2 * 2048 ** 3 / best / 1e12}}))
"""


# ------------------------------------------------------------------ processes
def measured(cmd, env=None, timeout=None) -> dict:
  """Runs `cmd` in a wrapper process; returns the JSON of its last stdout line that
  parses, plus `peak_rss_gib`, the command's own peak resident memory."""
  wrapper = [sys.executable, "-c", _RSS_WRAPPER, json.dumps(cmd)]
  try:
    proc = subprocess.run(wrapper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    raise SystemExit(f"compare_original: timed out after {timeout} s: {' '.join(cmd[:4])}") from None
  if proc.returncode != 0:
    tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    raise SystemExit(f"compare_original: {' '.join(cmd[:4])} failed (exit {proc.returncode}):\n{tail}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# Runs the command given as JSON, passes its stdout through and appends its peak RSS.
_RSS_WRAPPER = r"""
import json, os, resource, subprocess, sys
cmd = json.loads(sys.argv[1])
p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
if p.returncode:
  sys.exit(p.returncode)
res = None
for line in reversed(p.stdout.strip().splitlines()):
  try:
    res = json.loads(line); break
  except json.JSONDecodeError:
    pass
if res is None:
  sys.exit("no JSON result")
res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
print(json.dumps(res))
"""


# Runs a script (argv[1], its arguments after it) with time.perf_counter reading
# process CPU time: `--clock cpu` for the original's ref_bench.py.
_CPU_CLOCK_RUNNER = r"""
import runpy, sys, time
time.perf_counter = time.process_time
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def ours_cmd(task, args) -> list:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", task, "--clock", args.clock,
         "--config", args.config,
         "--train-config", args.train_config, "--train-steps", str(args.train_steps),
         "--t2i-points", str(args.t2i_points), "--new-tokens", str(args.new_tokens)]
  return cmd + [f"--config.{k}={v}" for k, v in args.overrides]


def reference_env(args) -> dict:
  env = dict(os.environ)
  env["REF"] = os.path.abspath(args.reference_code)
  stub = args.reference_pythonpath or os.path.join(os.path.dirname(env["REF"]), "stub")
  env["PYTHONPATH"] = stub
  return env


def ratio(original, ours, higher_is_better=False):
  if not original or not ours:
    return None
  return ours / original if higher_is_better else original / ours


def median(rows, key):
  vals = [r[key] for r in rows if r.get(key) is not None]
  return statistics.median(vals) if vals else None


def _train_label(train_config: str) -> str:
  """The train row's name: the config, plus the batch the original's ref_bench.py times."""
  return ("train step, batch 2 x 1024, stage 2" if train_config == "small_train"
          else f"train step, {train_config}")


def _image_label(config: str) -> str:
  return "432 px" if config == "small" else f"({config} config)"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reference-python", default=None, help="the python that runs the original")
  p.add_argument("--reference-code", default=None, help="the original's show-o2 directory")
  p.add_argument("--reference-pythonpath", default=None,
                 help="extra PYTHONPATH for the original (default: 'stub' beside --reference-code)")
  p.add_argument("--reference-bench", default=DEFAULT_REF_BENCH,
                 help="the original's benchmark script, ref_bench.py of the shared bench/ folder "
                      "(default: ../shared/bench/ref_bench.py beside this repository)")
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours, then the original)")
  p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
  p.add_argument("--config", default="small", help="model config of T2I and decode")
  p.add_argument("--train-config", default="small_train")
  p.add_argument("--train-steps", type=int, default=3, help="timed steps after one warm-up step")
  p.add_argument("--t2i-points", type=int, default=50, help="Euler grid points (points-1 evaluations)")
  p.add_argument("--new-tokens", type=int, default=64,
                 help="decode: tokens generated (the rate is (N - 1) / (time(N) - time(1)))")
  p.add_argument("--ref-calls", type=int, default=2, help="original: timed T2I CFG calls per round")
  p.add_argument("--ref-tokens", type=int, default=8, help="original: generated tokens per round")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="original's torch threads")
  p.add_argument("--timeout", type=float, default=3600, help="seconds per process")
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                 help="wall seconds, or process CPU seconds of both programs (shared machines)")
  p.add_argument("--json", default=None)
  p.add_argument("--worker", choices=sorted(WORKERS), default=None, help=argparse.SUPPRESS)
  sys.path.insert(0, ROOT)
  sys.path.insert(0, HERE)
  from showo2_jax.train import config_overrides  # pylint: disable=import-outside-toplevel
  config_overrides.accept_overrides(p)
  args = p.parse_args(argv)
  args.overrides = list(args.config_overrides or [])
  if args.worker:
    if args.clock == "cpu":
      import time  # pylint: disable=import-outside-toplevel
      time.perf_counter = time.process_time
    print(json.dumps(WORKERS[args.worker](args)), flush=True)
    return 0
  tasks = [t for t in args.tasks.split(",") if t]
  bad = [t for t in tasks if t not in TASKS]
  if bad:
    p.error(f"--tasks: unknown {bad}; choose from {list(TASKS)}")
  with_ref = bool(args.reference_python or args.reference_code)
  if with_ref and not (args.reference_python and args.reference_code):
    p.error("--reference-python and --reference-code go together")
  if with_ref:
    for flag, path in (("--reference-python", args.reference_python),
                       ("--reference-code", args.reference_code), ("--reference-bench", args.reference_bench)):
      if not os.path.exists(path):
        p.error(f"{flag}: {path} does not exist" + (
            " (pass the shared bench/ref_bench.py: --reference-bench PATH)"
            if flag == "--reference-bench" else ""))
  for flag, name in (("--config", args.config), ("--train-config", args.train_config)):
    config_overrides.load_config_flag(p, flag, name)
  # ref_bench.py has no config flag: the original always runs BENCHMARKS.md's small config.
  comparable = (not with_ref or ((args.config == "small" or "t2i" not in tasks and "decode" not in tasks)
                                 and (args.train_config == "small_train" or "train" not in tasks)))

  machine = dict(processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                 threads_original=args.threads, load_avg_1m_start=os.getloadavg()[0])
  env_ours = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  peaks = {"jax": measured(ours_cmd("gemm", args), env_ours, args.timeout)["gemm_tflops"]}
  if with_ref:
    peaks["torch"] = measured([args.reference_python, "-c", TORCH_GEMM.format(
        threads=args.threads, clock="process_time" if args.clock == "cpu" else "perf_counter")],
        reference_env(args), args.timeout)["gemm_tflops"]
  print("GEMM peak (fp32 2048^3): " + ", ".join(f"{k} {1000 * v:.0f} GFLOP/s" for k, v in peaks.items()),
        flush=True)
  ours_rows, ref_rows = [], []
  for r in range(args.rounds):
    row = {}
    for task in tasks:
      res = measured(ours_cmd(task, args), env_ours, args.timeout)
      res[f"{task}_peak_rss_gib"] = res.pop("peak_rss_gib")
      row.update(res)
      print(f"round {r + 1} ours {task}: {json.dumps(res)}", flush=True)
    ours_rows.append(row)
    if with_ref:
      cmd = [args.reference_python] + (["-c", _CPU_CLOCK_RUNNER] if args.clock == "cpu" else [])
      cmd += [os.path.abspath(args.reference_bench), "--calls", str(args.ref_calls),
             "--tokens", str(args.ref_tokens), "--train-steps", str(args.train_steps),
             "--threads", str(args.threads)]
      # ref_bench.py saves its random HF models (~210 MB) to a mkdtemp it never removes:
      # give it a TMPDIR of ours that goes away after the round.
      with tempfile.TemporaryDirectory(prefix="compare_original_ref_") as ref_tmp:
        res = measured(cmd, dict(reference_env(args), TMPDIR=ref_tmp), args.timeout)
      ref_rows.append(res)
      print(f"round {r + 1} original: {json.dumps(res)}", flush=True)
  machine["load_avg_1m_end"] = os.getloadavg()[0]

  peak = max(peaks.values())
  ours = {k: median(ours_rows, k) for k in ours_rows[0]}
  ref = {k: median(ref_rows, k) for k in ref_rows[0]} if ref_rows else {}
  flop = ours.get("model_tflop_per_step")
  table = []
  if "train" in tasks:
    o_s, r_s = ours.get("train_s_per_step"), ref.get("train_s_per_step_b2_L1024")
    table.append(dict(task=_train_label(args.train_config), unit="s/step", original=r_s, ours=o_s,
                      speedup=ratio(r_s, o_s), ours_peak_gib=ours.get("train_peak_rss_gib"),
                      mfu_ours=flop / o_s / peak if flop and o_s else None,
                      mfu_original=flop / r_s / peak if flop and r_s else None))
  if "t2i" in tasks:
    o_s, r_s = ours.get("t2i_s_per_image"), ref.get("t2i_s_per_image_50_steps_est")
    if r_s and args.t2i_points != 50:
      r_s = ref["t2i_s_per_cfg_call"] * (args.t2i_points - 1)
    table.append(dict(task=f"T2I {_image_label(args.config)}, {args.t2i_points}-point Euler + CFG",
                      unit="s/image",
                      original=r_s, ours=o_s, speedup=ratio(r_s, o_s),
                      ours_peak_gib=ours.get("t2i_peak_rss_gib")))
  if "decode" in tasks:
    o_t, r_t = ours.get("decode_tok_per_s"), ref.get("mmu_tok_per_s")
    table.append(dict(task="understanding decode, batch 1", unit="tok/s", original=r_t, ours=o_t,
                      speedup=ratio(r_t, o_t, higher_is_better=True),
                      ours_peak_gib=ours.get("decode_peak_rss_gib")))
  fmt = lambda v, f="{:.3g}": "-" if v is None else f.format(v)  # noqa: E731
  speed = lambda v: ("-" if v is None else f"{v:.2f}x faster" if v >= 1  # noqa: E731
                     else f"{v:.2f}x ({1 / v:.2f}x slower)")
  print(f"\n{args.config} / {args.train_config} configs, fp32, {args.rounds} alternating round(s), medians, {args.clock} seconds; "
        f"{machine['processor']}, {machine['cpu_count']} cores, load (1 min) "
        f"{machine['load_avg_1m_start']:.1f} -> {machine['load_avg_1m_end']:.1f}")
  print(f"GEMM peak (fp32 2048^3): " + ", ".join(f"{k} {1000 * v:.0f} GFLOP/s" for k, v in peaks.items()))
  if not comparable:
    print(f"NOT COMPARABLE: the original (ref_bench.py) always runs the small / small_train configs, "
          f"ours ran {args.config} / {args.train_config}; the ratios below only test the plumbing")
  print(f"| task | unit | original (PyTorch) | ours | ours vs original | ours peak RSS |")
  print("|---|---|---|---|---|---|")
  for t in table:
    print(f"| {t['task']} | {t['unit']} | {fmt(t['original'])} | {fmt(t['ours'])} | "
          f"{speed(t['speedup'])} | {fmt(t['ours_peak_gib'], '{:.2f} GiB')} |")
  if ref_rows:
    print(f"original peak RSS (one process, all three tasks, train step last): "
          f"{fmt(ref.get('peak_rss_gib'), '{:.2f} GiB')}")
  if "decode" in tasks and ours.get("decode_tok_per_s") is None:
    import inference_benchmark as ib  # pylint: disable=import-outside-toplevel
    print(f"decode: {ib.no_rate(args.new_tokens)}")
  for t in table:
    if "mfu_ours" in t:
      print(f"train MFU vs measured GEMM peak: ours {fmt(t['mfu_ours'], '{:.0%}')}, original "
            f"{fmt(t['mfu_original'], '{:.0%}')} ({flop:.3f} TFLOP/step, showo2_jax.train.flops)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(machine=machine, gemm_peak_tflops=peaks, table=table, comparable=comparable,
                     ours_rounds=ours_rows,
                     original_rounds=ref_rows, args={k: v for k, v in vars(args).items()
                                                     if k != "config_overrides"}), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
