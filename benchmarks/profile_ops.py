"""Where the time goes: a JAX profiler trace of one task, its op self times summed per HLO op.

Also summed per part of the model, per module and per kind of op, and (train) the
bound on how fast the step can get with its non-matmul time as it is.

    python benchmarks/profile_ops.py --task train --config small_train --steps 2
    python benchmarks/profile_ops.py --task train --compare-json compare.json --json profile.json
    python benchmarks/profile_ops.py --task t2i --config small --steps 2
    python benchmarks/profile_ops.py --task decode --config small --steps 2
    python benchmarks/profile_ops.py --task train --xla-dump DIR    # also the optimised HLO

Traces `--steps` runs of the compiled program (compilation excluded) with
`jax.profiler.trace`, reads the trace back (`jax.profiler.ProfileData`) and sums
the *self* time of every executed HLO op (on CPU: one event per thunk; a `while`
or `conditional` thunk's event encloses the events of its body on the same thread,
so their time is counted once, in the innermost op, and what the control-flow
thunk keeps is its own overhead: "loop/cond control"). Each op is put in a part
of the model from the name stack XLA keeps in its metadata (flax module path +
JAX primitive) and in a kind: "matmul" is an op whose HLO holds a `dot` or
`convolution` (its own or inside its fusion; `flops.hlo_instruction_flops`), so the
executed matmul FLOPs are counted exactly: 2 per multiply-add of each, times the
number of times the trace saw the op run (remat, skipped attention blocks and NTP
chunks included as they ran).

Shares are of the op time; "seconds" of a part or kind are its share x the traced
step's wall time (the bound instead scales the shares by the untraced step's wall, timed
just before the trace: the profiler itself slows the step, ~1.8x on `small_train`) (the op time is summed over threads, so with intra-op threading
it can exceed wall time).

The bound (train): with M matmul seconds running F executed matmul FLOPs and N
non-matmul seconds (wall - M), the step cannot go below F / peak + N while the
non-matmul time stays what it is (peak: the best fp32 2048^3 GEMM rate measured in
this process, or the larger of it and `--compare-json`'s peaks, or `--peak-tflops`).
Given the original's step time (`--original-step-s`, or the train row of
`compare_original.py --json` via `--compare-json`), it prints that bound as a
ratio and what would meet `--target` (1.2x): the non-matmul seconds allowed with
the matmuls as they run and at 100% of the peak, and the matmul efficiency needed
with the non-matmul time as it is. `--json` writes everything.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from showo2_jax.train import flops  # noqa: E402

_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_metadata(hlo_text: str) -> dict:
  """HLO instruction name -> (opcode, op_name metadata), fusions take their first
  fused instruction's op_name when they carry none themselves (`flops.parse_hlo`)."""
  comps, _ = flops.parse_hlo(hlo_text)
  out, comp_names = {}, collections.defaultdict(list)
  for comp, body in comps.items():
    for i in body:
      op = _OP_NAME.search(i.args)
      out[i.name] = (i.opcode, op.group(1) if op else "", (i.called.get("calls") or [None])[0])
      if op:
        comp_names[comp].append(op.group(1))
  resolved = {}
  for name, (opcode, op, calls) in out.items():
    if calls and comp_names.get(calls):
      names = comp_names[calls]
      dots = [n for n in names if "dot_general" in n]
      op = (dots or [max(names, key=len)])[0] if not op or opcode == "fusion" else op
    resolved[name] = (opcode, op)
  return resolved


PARTS = [  # first match wins; matched against the op_name metadata (name stack)
    ("lm_head + cross-entropy", ("ntp_loss", "logsumexp", "/logits", "attend", "lm_head", "chunked_ntp")),
    ("attention scores/softmax/mask", ("dot_product_attention", "softmax", "bhgqk", "bqhgd,bkhd",
                                       "chunked_attention", "splash", "flash")),
    ("omni-attention mask", ("omni_attention_mask", "bmq,bmk", "window_mask")),
    ("semantic layers (SigLIP)", ("und_trans", "image_embedder_und", "position_embedding")),
    ("flow head", ("diffusion_head", "diff_proj", "time_embed", "flow_loss")),
    ("LLM norms", ("layernorm", "/norm")),
    ("LLM attention projections + RoPE", ("self_attn",)),
    ("LLM MLP", ("/mlp",)),
    ("embeddings / fusion", ("embed_tokens", "fusion_proj", "image_embedder_gen", "embed_sequence")),
    ("optimizer (AdamW, clip)", ("adam", "clip", "global_norm", "apply_updates", "optax", "scale_by")),
]


_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "rope")


def part_of(op_name: str, opcode: str) -> str:
  low = op_name.lower()
  if "self_attn" in low and not any(k in low for k in _PROJ):
    return "attention scores/softmax/mask"      # QK^T, mask, softmax, PV (LLM, flow head, SigLIP)
  for part, keys in PARTS:
    if any(k in low for k in keys):
      return part
  if opcode in ("copy", "transpose", "copy-start", "copy-done"):
    return "copies / transposes"
  return "other"


# The parts of benchmarks/reference_breakdown.py (the original's step timed with module
# hooks), so the two programs can be compared part by part. First match wins; matched
# against the lower-cased name stack. Our lm_head only runs inside the NTP loss, so the
# two are one part here.
MODULE_PARTS = [
    ("lm_head + NTP loss", ("ntp_loss", "chunked_ntp", "logsumexp", "logits", "lm_head")),
    ("FM loss", ("flow_loss", "velocity")),
    ("SigLIP", ("und_trans",)),
    ("flow head rest", ("diffusion_head", "diff_proj")),
    ("projector/STF", ("image_embedder", "fusion_proj", "time_embed")),
    ("LLM attention", ("self_attn",)),
    ("LLM MLP", ("/mlp",)),
    ("LLM norms/residuals", (".llm/model/layers", ".llm/model/norm", "showo/model/layers")),
]


def module_part(op_name: str, opcode: str = "") -> str:
  """The part of `op_name` (an HLO op's name stack) for the "by module" table."""
  low = op_name.lower()
  if not low:
    # while/conditional/call thunks (the loop and branch control of the chunked
    # attention and the NTP scan) and copies XLA inserted carry no name stack.
    return "loop/cond control, unnamed copies"
  if "diffusion_head_a" in low and "self_attn" in low:
    return "flow head attention"
  for part, keys in MODULE_PARTS:
    if any(k in low for k in keys):
      return part
  if ("while/body" in low or "/cond" in low) and "self_attn" not in low:
    return "lm_head + NTP loss"      # the NTP loss's chunk scan (ntp_loss_from_hidden)
  if "jvp(" not in low and "showo2" not in low:
    return "optimizer (AdamW + clip)"  # outside the model's forward/backward
  return "other"


_CONTROL = ("while", "conditional", "call")


def kind_of(op_name: str, opcode: str, hlo_name: str, flops: float = 0.0) -> str:
  """matmul (the op runs a dot: `flops` > 0, or by name when the HLO is unknown),
  loop/cond control (a while/conditional/call thunk's self time), cast,
  copy/transpose, reduction, or elementwise/other."""
  low = op_name.lower()
  prim = low.rsplit("/", 1)[-1]
  if flops > 0 or (opcode == "?" and ("dot_general" in prim or opcode == "dot")):
    return "matmul"
  if opcode in _CONTROL:
    return "loop/cond control"
  if prim.startswith("convert_element_type") or opcode == "convert":
    return "cast"
  if opcode in ("copy", "transpose") or prim.startswith("transpose") or hlo_name.startswith(
      ("copy", "transpose")):
    return "copy/transpose"
  if prim.startswith(("reduce", "argmax", "argmin")) or opcode == "reduce":
    return "reduction"
  return "elementwise/other"


def self_times(lines) -> tuple:
  """(op -> self seconds, op -> executions) over the traced lines (threads): each
  event's duration less the durations of the events nested in it on the same line
  (a while/conditional thunk encloses its body's thunks)."""
  secs, count = collections.Counter(), collections.Counter()
  for events in lines:
    stack = []                               # [(end_ns, op)]
    for start, dur, op in sorted(events, key=lambda e: (e[0], -e[1])):
      while stack and start >= stack[-1][0]:
        stack.pop()
      if stack:
        secs[stack[-1][1]] -= dur * 1e-9       # time inside the enclosing op is this one's
      secs[op] += dur * 1e-9
      count[op] += 1
      stack.append((start + dur, op))
  return secs, count


def trace_ops(run, steps: int, hlo_text: str) -> dict:
  """Runs `run()` `steps` times under the profiler; returns per-op, per-part and
  per-kind self seconds per run, and the executed matmul FLOPs per run."""
  meta, dot_flops = hlo_metadata(hlo_text), flops.hlo_instruction_flops(hlo_text)
  trace_dir = tempfile.mkdtemp(prefix="profile_ops_")
  try:
    wall = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        jax.block_until_ready(run())
    wall = (time.perf_counter() - wall) / steps
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    lines = []
    for plane in data.planes:
      for line in plane.lines:
        evs = []
        for ev in line.events:
          op = dict(ev.stats).get("hlo_op")
          if op:
            evs.append((ev.start_ns, ev.duration_ns, op))
        if evs:
          lines.append(evs)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  secs, count = self_times(lines)
  per_op = collections.Counter({k: max(v, 0.0) / steps for k, v in secs.items()})
  total = sum(per_op.values())
  parts, kinds, modules, rows = (collections.Counter(), collections.Counter(), collections.Counter(),
                                 [])
  executed = 0.0
  for name, sec in per_op.most_common():
    opcode, op = meta.get(name, ("?", ""))
    f = dot_flops.get(name, 0.0)
    executed += f * count[name] / steps
    part, kind = part_of(op, opcode), kind_of(op, opcode, name, f)
    module = module_part(op, opcode)
    parts[part] += sec
    kinds[kind] += sec
    modules[module] += sec
    rows.append(dict(op=name, seconds=sec, share=sec / total, part=part, kind=kind, module=module,
                     runs=count[name] / steps, gflop=f * count[name] / steps / 1e9,
                     source=re.sub(r"^jit\([^)]*\)/", "", op)[-110:]))
  share = lambda c: {k: dict(seconds=v, share=v / total) for k, v in c.most_common()}  # noqa: E731
  return dict(wall_s_per_run=wall, op_s_per_run=total, ops=rows, parts=share(parts), kinds=share(kinds),
              modules=share(modules), executed_matmul_tflop=executed / 1e12)


def bound(wall_s: float, matmul_share: float, executed_tflop: float, peak_tflops: float,
          original_s=None, target: float = 1.2) -> dict:
  """The step's floor with its non-matmul time as it is, and what would meet `target`.

  wall_s: our step (s); matmul_share: the matmul ops' share of the op time;
  executed_tflop: matmul TFLOP the step ran; peak_tflops: the GEMM peak;
  original_s: the original's step (s) or None. Seconds are shares x wall_s.
  Returns a dict of seconds, ratios (original / ours, > 1: ours faster) and
  fractions; the ratio entries are None without original_s."""
  matmul_s = matmul_share * wall_s
  other_s = wall_s - matmul_s
  ideal_matmul_s = executed_tflop / peak_tflops
  floor_s = ideal_matmul_s + other_s
  out = dict(step_s=wall_s, matmul_s=matmul_s, non_matmul_s=other_s, executed_matmul_tflop=executed_tflop,
             peak_tflops=peak_tflops, matmul_tflops=executed_tflop / matmul_s if matmul_s else None,
             matmul_fraction_of_peak=ideal_matmul_s / matmul_s if matmul_s else None,
             matmul_s_at_peak=ideal_matmul_s, floor_s=floor_s, original_s=original_s, target=target,
             ratio_now=None, ratio_bound=None, budget_s=None, non_matmul_allowed_s=None,
             non_matmul_allowed_at_peak_s=None, matmul_fraction_needed=None)
  if original_s:
    budget = original_s / target
    out.update(ratio_now=original_s / wall_s, ratio_bound=original_s / floor_s, budget_s=budget,
               non_matmul_allowed_s=budget - matmul_s, non_matmul_allowed_at_peak_s=budget - ideal_matmul_s,
               matmul_fraction_needed=(ideal_matmul_s / (budget - other_s)) if budget > other_s else None)
  return out


def print_bound(b: dict) -> None:
  pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
  sec = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
  print("\nthe bound (seconds = share of op time x the untraced step's wall):")
  print("| figure | value |\n|---|---|")
  rows = [("our step (untraced)", sec(b["step_s"])),
          ("matmul ops", f"{sec(b['matmul_s'])}, {1000 * b['executed_matmul_tflop']:.1f} GFLOP executed, "
                         f"{1000 * (b['matmul_tflops'] or 0):.0f} GFLOP/s = {pct(b['matmul_fraction_of_peak'])} "
                         f"of the {1000 * b['peak_tflops']:.0f} GFLOP/s GEMM peak"),
          ("non-matmul ops (everything else)", sec(b["non_matmul_s"])),
          ("matmuls at 100% of the peak", sec(b["matmul_s_at_peak"])),
          ("floor: matmuls at peak + non-matmul as now", sec(b["floor_s"]))]
  if b["original_s"]:
    rows += [("the original's step", sec(b["original_s"])),
             ("ratio now (original / ours)", f"{b['ratio_now']:.2f}x"),
             ("ratio bound (original / floor)", f"{b['ratio_bound']:.2f}x"),
             (f"{b['target']:.2f}x needs ours <=", sec(b["budget_s"])),
             ("  non-matmul allowed, matmuls as now", sec(b["non_matmul_allowed_s"])),
             ("  non-matmul allowed, matmuls at peak", sec(b["non_matmul_allowed_at_peak_s"])),
             ("  matmul efficiency needed, non-matmul as now",
              "unreachable (the non-matmul time alone exceeds it)" if b["matmul_fraction_needed"] is None
              else pct(b["matmul_fraction_needed"]) + (" (over 100%: unreachable)"
                                                       if b["matmul_fraction_needed"] > 1 else ""))]
  for k, v in rows:
    print(f"| {k} | {v} |")


# ---------------------------------------------------------------------------- tasks
def train_program(config_name: str, overrides):
  from showo2_jax import sharding as sharding_lib
  from showo2_jax.config_lib import load_config
  from showo2_jax.train import config_overrides, data as data_lib, optimizer, tasks
  from showo2_jax.train import state as state_lib, step as step_lib
  config = config_overrides.apply(load_config(config_name), overrides)
  task = tasks.build(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    lay = state_lib.layout(task.init_params,
                           lambda l: optimizer.make_optimizer(config.optim, int(config.train.num_steps), l),
                           task.labels, mesh)
    state = state_lib.create(state_lib.init_params(task.init_params, lay, jax.random.PRNGKey(0)),
                             jnp.zeros((2,), jnp.uint32), lay)
    it = task.make_iterator(mesh)
    local = next(it)
    fn = step_lib.jit_train_step(step_lib.make_train_step(task.objective, lay), lay,
                                 data_lib.slots_by_row(local))
    batch = data_lib.to_global(local, mesh, int(config.train.global_batch_size))
    rng = np.zeros(2, np.uint32)
    compiled = fn.lower(state, batch, rng).compile()
  box = {"state": state}

  def run():
    box["state"], m = compiled(box["state"], batch, rng)
    return m
  return run, compiled.as_text()


def t2i_program(config_name: str, overrides):
  from showo2_jax.config_lib import load_config
  from showo2_jax.models.config import Showo2Config
  from showo2_jax.models.showo2 import Showo2
  from showo2_jax.flow import transport
  from showo2_jax.sample import prefix, visual
  from showo2_jax.train import config_overrides
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from inference_benchmark import random_params  # pylint: disable=import-outside-toplevel
  cfg = config_overrides.apply(load_config(config_name), overrides)
  config = Showo2Config.from_config_dict(cfg.model)
  model = Showo2(config, empty_slots_overwrite_bos=False)
  params = random_params(config, jnp.dtype(config.dtype))
  side = cfg.resolution // 8
  prompt = list(np.random.default_rng(0).integers(10, 200, 32))
  a = prefix.align([[1] + prompt + [3], [1, 3]], 0, multiple=32)
  noise = transport.initial_noise(jax.random.PRNGKey(0), (1, 16, side, side))
  grid = transport.time_grid(3)  # two model evaluations
  args = (model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, None, None, noise,
          grid, 7.5)
  compiled = visual.sample_latents.lower(*args).compile()
  return (lambda: compiled(*args[1:])), compiled.as_text()


def decode_program(config_name: str, overrides, new_tokens: int = 64):
  """Greedy cached decoding of `new_tokens` after one image + ~40 prompt tokens, batch 1:
  compare_original.py's decode task, same model and inputs (prefill included; it is
  one run's first ~5%)."""
  from showo2_jax.sample import decode
  from showo2_jax.sample.tokens import GREEDY
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import compare_original  # pylint: disable=import-outside-toplevel
  import inference_benchmark  # pylint: disable=import-outside-toplevel
  model, params, cfg = compare_original.build_model(config_name, overrides)
  args, _ = inference_benchmark.decode_inputs(model, params, cfg)
  compiled = decode.generate.lower(*args, max_new_tokens=new_tokens, sampling=GREEDY).compile()
  return (lambda: compiled(*args[1:]).tokens), compiled.as_text()


def original_from_compare(res: dict) -> tuple:
  """(the original's train step s or None, GEMM peaks {framework: TFLOP/s}) of a
  loaded `compare_original.py --json` file."""
  step = next((r["original"] for r in res.get("table", []) if r.get("task", "").startswith("train")), None)
  return step, dict(res.get("gemm_peak_tflops", {}))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("train", "t2i", "decode"), default="train")
  p.add_argument("--config", default=None, help="default: small_train (train), small (t2i, decode)")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--json", default=None)
  p.add_argument("--xla-dump", default=None, help="also write the optimised HLO text here")
  p.add_argument("--original-step-s", type=float, default=None,
                 help="train: the original's step time (s) for the bound's ratios")
  p.add_argument("--compare-json", default=None,
                 help="train: compare_original.py --json output: the original's step and GEMM peaks")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="train: GEMM peak for the bound (default: measured here, fp32 2048^3)")
  p.add_argument("--target", type=float, default=1.2, help="train: the ratio to meet (original / ours)")
  from showo2_jax.train import config_overrides  # pylint: disable=import-outside-toplevel
  config_overrides.accept_overrides(p)
  args = p.parse_args(argv)
  original_s, peaks, compare = args.original_step_s, {}, {}
  if args.compare_json:
    if not os.path.exists(args.compare_json):
      p.error(f"--compare-json: {args.compare_json} does not exist")
    with open(args.compare_json) as f:
      compare = json.load(f)
    step, peaks = original_from_compare(compare)
    original_s = original_s or step
  name = args.config or ("small_train" if args.task == "train" else "small")
  config_overrides.load_config_flag(p, "--config", name)
  if compare and args.task == "train":
    compared = compare.get("args", {}).get("train_config")
    if compare.get("comparable") is False:
      p.error(f"--compare-json: {args.compare_json} compared configs the original does not run "
              f"(ref_bench.py times small / small_train only): its original step bounds nothing")
    if compared and compared != name:
      p.error(f"--compare-json: {args.compare_json} timed the train config '{compared}', this profile "
              f"'{name}': pass --config {compared} or --original-step-s")
  build = {"train": train_program, "t2i": t2i_program, "decode": decode_program}[args.task]
  run, hlo = build(name, args.config_overrides)
  jax.block_until_ready(run())  # warm
  if args.xla_dump:
    os.makedirs(args.xla_dump, exist_ok=True)
    with open(os.path.join(args.xla_dump, f"{args.task}_{name}.hlo.txt"), "w") as f:
      f.write(hlo)
  load_start = os.getloadavg()[0]
  untraced = time.perf_counter()  # the profiler slows the step (~1.8x on the small config): the bound uses this
  for _ in range(args.steps):
    jax.block_until_ready(run())
  untraced = (time.perf_counter() - untraced) / args.steps
  res = trace_ops(run, args.steps, hlo)
  res["untraced_wall_s_per_run"] = untraced
  res.update(task=args.task, config=name, load_avg_1m_start=load_start, load_avg_1m=os.getloadavg()[0],
             cpu_count=os.cpu_count(), steps=args.steps)
  if args.task == "train":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train_benchmark  # pylint: disable=import-outside-toplevel
    if args.peak_tflops:
      peaks = {"given": args.peak_tflops}
    else:
      peaks["jax (this process)"] = train_benchmark.measured_peak_tflops()
    res["gemm_peak_tflops"] = peaks
    res["model_tflop_per_step"] = model_tflop(name, args.config_overrides)
    res["bound"] = bound(res["untraced_wall_s_per_run"], res["kinds"].get("matmul", {}).get("share", 0.0),
                         res["executed_matmul_tflop"], max(peaks.values()), original_s, args.target)
  print(f"{args.task} [{name}]: {res['wall_s_per_run']:.3f} s wall per run, "
        f"{res['op_s_per_run']:.3f} s op time (self time, summed over threads), load "
        f"{res['load_avg_1m_start']:.2f} -> {res['load_avg_1m']:.2f}, {os.cpu_count()} cores")
  if args.task == "train":
    print(f"matmul FLOPs executed {1000 * res['executed_matmul_tflop']:.1f} GFLOP per step (model formula "
          f"{1000 * res['model_tflop_per_step']:.1f}); GEMM peak " +
          ", ".join(f"{k} {1000 * v:.0f}" for k, v in peaks.items()) + " GFLOP/s")
  wall = res["wall_s_per_run"]
  for title, key in (("by part of the model", "parts"),
                     ("by module (the parts of benchmarks/reference_breakdown.py)", "modules"),
                     ("by kind of op", "kinds")):
    print(f"\n{title} (share of op time; seconds = share x wall):")
    for k, v in res[key].items():
      print(f"  {k:<36} {v['share'] * wall:8.3f} s  {100 * v['share']:5.1f}%")
  print(f"\ntop {args.top} ops (share, seconds = share x wall, runs per step, kind, part, name stack):")
  for r in res["ops"][:args.top]:
    print(f"  {100 * r['share']:5.1f}%  {r['share'] * wall:7.3f} s  x{r['runs']:<5.0f} {r['kind']:<18} "
          f"{r['part']:<30} {r['source']}")
  if "bound" in res:
    print_bound(res["bound"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


def model_tflop(config_name: str, overrides) -> float:
  """The model formula's TFLOP per step (showo2_jax.train.flops), as the benchmarks state MFU."""
  from showo2_jax.config_lib import load_config  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.config import Showo2Config  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import config_overrides, data as data_lib  # pylint: disable=import-outside-toplevel
  config = config_overrides.apply(load_config(config_name), overrides)
  return flops.train_flops_per_step(Showo2Config.from_config_dict(config.model), int(config.max_seq_len),
                                    data_lib.slots_per_row(config),
                                    int(config.train.global_batch_size)) / 1e12


if __name__ == "__main__":
  sys.exit(main())
