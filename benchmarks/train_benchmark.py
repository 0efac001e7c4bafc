"""Training step time, tokens/s and MFU of a config (shared/docs/BENCHMARKS.md).

    python benchmarks/train_benchmark.py --config tiny_train --steps 20
    python benchmarks/train_benchmark.py --config small_train --steps 3
    python benchmarks/train_benchmark.py --config stage2_1p5b:b --steps 10 \
        --config.train.global_batch_size=8 --peak-tflops 989   # one H100, bf16 dense

Times `--steps` jitted steps after one warm-up (compile) step on synthetic data,
blocking on each step's outputs. `cpu_step_s` is the median process CPU time
(user + system, all threads) of a step: on a shared machine, the figure that load
distorts least. MFU = model FLOPs per second / peak, model FLOPs
from showo2_jax.train.flops (3 x forward matmul FLOPs, stated there). Without
--peak-tflops the peak is *measured*: the best float32 GEMM rate of this machine
(so CPU MFU reads as "fraction of what a big matmul reaches here").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from showo2_jax import sharding as sharding_lib  # noqa: E402
from showo2_jax.train import config_overrides, data as data_lib, flops, optimizer, tasks  # noqa: E402
from showo2_jax.train import state as state_lib, step as step_lib  # noqa: E402


def measured_peak_tflops(n: int = 2048, reps: int = 5, budget_s: float = 10.0) -> float:
  """The best float32 n^3 GEMM rate (TFLOP/s) of this machine over up to `reps` timed
  runs after one warm-up; stops early once the timed runs have taken `budget_s` (on a
  loaded machine one 2048^3 GEMM can take seconds, and the best of fewer runs is still
  an upper-bound-seeking estimate)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best, spent = float("inf"), 0.0
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    dt = time.perf_counter() - t
    best, spent = min(best, dt), spent + dt
    if spent >= budget_s:
      break
  return 2 * n ** 3 / best / 1e12


def bench(config, steps: int) -> dict:
  task = tasks.build(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  num_steps = int(config.train.num_steps)
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    lay = state_lib.layout(task.init_params,
                           lambda l: optimizer.make_optimizer(config.optim, num_steps, l),
                           task.labels, mesh)
    state = state_lib.create(state_lib.init_params(task.init_params, lay, jax.random.PRNGKey(0)),
                             jnp.zeros((2,), jnp.uint32), lay)
    it = task.make_iterator(mesh)
    local = next(it)
    fn = step_lib.jit_train_step(step_lib.make_train_step(
        task.objective, lay, grad_accum_steps=int(config.train.grad_accum_steps)),
        lay, data_lib.slots_by_row(local))
    gb = int(config.train.global_batch_size)
    batches = [data_lib.to_global(next(it), mesh, gb) for _ in range(steps + 1)]
    t = time.perf_counter()
    state, m = fn(state, batches[0], np.zeros(2, np.uint32))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times, cpu = [], []
    for i in range(steps):
      t, c = time.perf_counter(), time.process_time()
      state, m = fn(state, batches[i + 1], np.full(2, i, np.uint32))
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
  step_s = float(np.median(times))
  images = data_lib.slots_per_row(config)
  model_flops = flops.train_flops_per_step(task.model_config, int(config.max_seq_len), images, gb)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lay.abstract.params))
  return dict(step_s=step_s, min_step_s=float(min(times)), cpu_step_s=float(np.median(cpu)),
              compile_and_first_step_s=compile_s,
              tokens_per_s=gb * int(config.max_seq_len) / step_s, model_tflop_per_step=model_flops / 1e12,
              model_tflops=model_flops / step_s / 1e12, params_m=params / 1e6,
              loss=float(m["loss"]), global_batch=gb, seq_len=int(config.max_seq_len))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="tiny_train")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--peak-tflops", type=float, default=None, help="device peak; default: measured GEMM")
  p.add_argument("--json", default=None, help="also write the result here")
  config_overrides.accept_overrides(p)
  args = p.parse_args(argv)
  config = config_overrides.apply(config_overrides.load_config_flag(p, "--config", args.config),
                                  args.config_overrides)
  result = bench(config, args.steps)
  t = time.perf_counter()
  peak = args.peak_tflops or measured_peak_tflops()
  result.update(peak_tflops=peak, peak_probe_s=time.perf_counter() - t, peak_source="given" if args.peak_tflops else "measured fp32 GEMM",
                mfu=result["model_tflops"] / peak, config=args.config,
                device=f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} x{jax.device_count()}",
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                threads=os.cpu_count())
  for k, v in result.items():
    print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
