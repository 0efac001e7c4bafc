"""Per-chip memory and FLOPs of the train step on TPU pods, compiled on a CPU host.

For each (config, topology, attention_impl) the exact train step is compiled by
the TPU compiler for an abstract topology (libtpu, `pip install -e '.[tpu]'`; no
TPU), one subprocess each, and one table row is printed: per-chip arguments,
temporaries and XLA's peak (`peak_memory_in_bytes`, what the compiler checks
against HBM), model FLOPs per chip per step (train/flops.py) beside the step's
matmul FLOPs counted on its jaxpr (scanned layers times their count, remat
recompute included), the compiled HLO's matmuls (flops.hlo_matmul_flops: each
loop body times its trip count) and XLA's cost analysis (which counts a scanned
layer stack's body once), and the step time and tokens/s
per chip implied at 50% of the chip's peak bf16 FLOP/s.

  python benchmarks/pod_compile.py --configs stage2_1p5b:b --topologies v5p-128 v5e-256 \
      --impls dense chunked --rows-per-chip 8 --json /tmp/pod.json
  python benchmarks/pod_compile.py --configs stage2_1p5b:b --topologies v5p:4x4x4 --slices 2

`--slices S` compiles for S copies of each topology joined over DCN (multislice;
the row's topology reads "S x NAME", the DCN mesh axes come from config.mesh.dcn_*).

Big compiles take minutes and several GiB of host memory each; run them one at a time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

# The paper's rows per GPU, one chip each (spec 7): 6 t2i + 2 captioning (stage 1),
# 4 + 4 (1.5B stage 2), 2 + 2 (7B stage 2), 2 sequences of 4352 tokens (mixed modality).
PAPER_ROWS_PER_CHIP = {"stage1_1p5b": 8, "stage2_1p5b": 8, "stage2_7b": 4, "mixed_modality_1p5b": 2}

# Peak dense bf16 TFLOP/s per device (Cloud TPU docs; v4 devices are TensorCores).
PEAK_BF16_TFLOPS = {"TPU v4": 137.5, "TPU v5": 459.0, "TPU v5 lite": 197.0, "TPU v6 lite": 918.0}

ONE = """
import json, resource, sys
from showo2_jax.cli.train import quiet_libraries
from showo2_jax import config_lib
from showo2_jax.train import aot, config_overrides
quiet_libraries()
name, topo, impl, rows, overrides, slices = json.loads(sys.argv[1])
c = config_lib.load_config(name)
devs = aot.tpu_devices(topo, slices)
c.train.global_batch_size = rows * len(devs)
c.model.attention_impl = impl
for kv in overrides:
  k, v = kv.split("=", 1)
  node = c
  *parents, leaf = k.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = type(node[leaf])(json.loads(v) if not isinstance(node[leaf], str) else v)
r = aot.compile_train_step(c, devs)
print("RESULT", json.dumps(dict(
    config=name, topology=topo if slices == 1 else f"{slices} x {topo}", impl=impl,
    rows_per_chip=rows, devices=r.devices, mesh=r.mesh,
    device_kind=r.device_kind, remat=c.model.remat_policy, argument_gib=r.argument_bytes / 2**30,
    temp_gib=r.temp_bytes / 2**30, peak_gib=r.peak_bytes / 2**30,
    hbm_gib=aot.HBM_BYTES.get(r.device_kind, 0) / 2**30, model_tflop=r.model_flops / 1e12,
    program_tflop=r.program_flops / 1e12,
    xla_tflop=r.flops / 1e12, xla_layer_tflop=r.xla_layer_flops / 1e12,
    unknown_trip_loops=r.unknown_trip_loops, tokens_per_chip=r.tokens_per_device,
    compile_s=r.compile_seconds, compile_cpu_s=r.compile_cpu_seconds, trace_s=r.trace_seconds,
    lower_s=r.lower_seconds, while_loops=r.while_loops,
    max_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, collectives=r.collectives)))
"""


def topology_label(topo: str, slices: int) -> str:
  """A row's topology: the name, or "S x NAME" for S slices over DCN."""
  return topo if slices == 1 else f"{slices} x {topo}"


def run_one(name, topo, impl, rows, overrides, timeout, slices=1):
  arg = json.dumps([name, topo, impl, rows, overrides, slices])
  p = subprocess.run([sys.executable, "-c", ONE, arg], capture_output=True, text=True, timeout=timeout)
  for line in p.stdout.splitlines():
    if line.startswith("RESULT "):
      row = json.loads(line[len("RESULT "):])
      peak = PEAK_BF16_TFLOPS.get(row["device_kind"], 0.0)
      step = row["model_tflop"] / (0.5 * peak) if peak else float("nan")
      row.update(step_s_at_50pct=step, tokens_per_s_per_chip=row["tokens_per_chip"] / step,
                 matmul_over_model=row["program_tflop"] / row["model_tflop"])
      return row
  err = (p.stderr.strip().splitlines() or ["no output"])[-1]
  return dict(config=name, topology=topology_label(topo, slices), impl=impl, rows_per_chip=rows,
              error=err[:200])


def flop_check(r) -> str:
  """One line: the step's jaxpr matmul FLOPs (scan bodies x their trip count) against
  the model formula. Full remat recomputes the forward, so up to ~4/3 is expected there."""
  if "error" in r:
    return f"{r['config']} {r['topology']} {r['impl']}: error"
  ratio = r["matmul_over_model"]
  xla = r.get("xla_layer_tflop", float("nan")) / r["model_tflop"]
  within = lambda x: "within" if abs(x - 1) <= 0.10 else "OUTSIDE"
  return (f"FLOP check {r['config']} {r['topology']} {r['impl']} remat={r['remat']}: jaxpr matmuls "
          f"{r['program_tflop']:.1f} vs model formula {r['model_tflop']:.1f} TFLOP/chip = {ratio:.3f}x "
          f"({within(ratio)} 10%); compiled HLO (loop bodies x trips) "
          f"{r.get('xla_layer_tflop', float('nan')):.1f} = {xla:.3f}x ({within(xla)} 10%); XLA cost "
          f"analysis {r['xla_tflop']:.1f} (scan bodies once); compile {r['compile_s']:.0f} s wall, "
          f"{r['compile_cpu_s']:.0f} CPU s, {r['while_loops']} while loops, {r['max_rss_gib']:.1f} GiB RSS; "
          f"mesh {r.get('mesh', '-')}")


def table(rows) -> str:
  head = ("| config | topology | attention | rows/chip | remat | args GiB | temps GiB | peak GiB "
          "(HBM) | model TFLOP/chip | matmul TFLOP/chip | XLA TFLOP/chip per layer (body once) | "
          "step s @50% | tokens/s/chip |")
  lines = [head, "|" + "---|" * 13]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['config']} | {r['topology']} | {r['impl']} | {r['rows_per_chip']} | "
                   f"error: {r['error']} ||||||||")
      continue
    lines.append(
        f"| {r['config']} | {r['topology']} | {r['impl']} | {r['rows_per_chip']} | {r['remat']} | "
        f"{r['argument_gib']:.2f} | {r['temp_gib']:.2f} | {r['peak_gib']:.2f} ({r['hbm_gib']:.0f}) | "
        f"{r['model_tflop']:.1f} | {r.get('program_tflop', float('nan')):.1f} | "
        f"{r.get('xla_layer_tflop', float('nan')):.1f} ({r['xla_tflop']:.1f}) | {r['step_s_at_50pct']:.2f} | "
        f"{r['tokens_per_s_per_chip']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", nargs="+", default=["stage2_1p5b:b"])
  p.add_argument("--topologies", nargs="+", default=["v5p-128"])
  p.add_argument("--impls", nargs="+", default=["dense"])
  p.add_argument("--rows-per-chip", type=int, default=None,
                 help="rows per chip (global batch = rows x chips); default: the paper's per-GPU rows "
                      f"of the config ({', '.join(f'{k} {v}' for k, v in PAPER_ROWS_PER_CHIP.items())})")
  p.add_argument("--set", nargs="*", default=[], help="config overrides key=value (e.g. model.remat_policy=full)")
  p.add_argument("--slices", type=int, default=1,
                 help="join this many copies of each topology over DCN (multislice; config.mesh.dcn_*)")
  p.add_argument("--timeout", type=int, default=3600)
  p.add_argument("--json", default=None,
                 help="write the rows here, rewritten after each row (a partial run keeps what it measured)")
  args = p.parse_args(argv)
  rows_per_chip = {name: args.rows_per_chip or PAPER_ROWS_PER_CHIP.get(name.split(":")[0])
                   for name in args.configs}
  for name, per_chip in rows_per_chip.items():
    if per_chip is None:
      p.error(f"no paper rows per chip known for {name}: pass --rows-per-chip")
  rows = []
  for name in args.configs:
    per_chip = rows_per_chip[name]
    for topo in args.topologies:
      for impl in args.impls:
        try:
          rows.append(run_one(name, topo, impl, per_chip, args.set, args.timeout, args.slices))
        except subprocess.TimeoutExpired:
          rows.append(dict(config=name, topology=topology_label(topo, args.slices), impl=impl,
                           rows_per_chip=per_chip,
                           error=f"compile did not finish in {args.timeout} s"))
        print(json.dumps(rows[-1]), flush=True)
        print(flop_check(rows[-1]), flush=True)
        if args.json:
          with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
  print(table(rows))


if __name__ == "__main__":
  main()
