"""Where the time goes: a JAX profiler trace of one task, summed per HLO op and per part.

    python benchmarks/profile_ops.py --task train --config small_train --steps 2
    python benchmarks/profile_ops.py --task t2i --config small --steps 2
    python benchmarks/profile_ops.py --task train --xla-dump DIR    # also the optimised HLO

Traces `--steps` runs of the compiled program (compilation excluded) with
`jax.profiler.trace`, reads the trace back (`jax.profiler.ProfileData`), and sums
the duration of every executed HLO op (on CPU: one event per thunk). Each op is
put in a part of the model from the name stack XLA keeps in its metadata
(flax module path + JAX primitive): attention scores/softmax, matmuls of the
LLM / flow head / semantic layers, lm_head + cross-entropy, norms, casts, ...
Prints the top ops and the parts with their share of the op time; `--json`
writes both. Op time is summed over threads, so with intra-op threading it can
exceed wall time; shares are what to read.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_metadata(hlo_text: str) -> dict:
  """HLO instruction name -> (opcode, op_name metadata), fusions take their first
  fused instruction's op_name when they carry none themselves."""
  out, comp_names, current = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and "{" in line:
      current = line.split()[0] if not line.startswith("ENTRY") else "ENTRY"
      current = current.lstrip("%")
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    op = _OP_NAME.search(line)
    calls = _CALLS.search(line)
    out[name] = (opcode, op.group(1) if op else "", calls.group(1) if calls else None)
    if op and current:
      comp_names[current].append(op.group(1))
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


def kind_of(op_name: str, opcode: str, hlo_name: str) -> str:
  low = (op_name + " " + hlo_name).lower()
  if "dot" in low or "gemm" in low or "matmul" in low or "ynn" in hlo_name or opcode == "dot":
    return "matmul"
  if "convert_element_type" in low or opcode == "convert":
    return "cast"
  if opcode in ("copy", "transpose") or "transpose" in low:
    return "copy/transpose"
  if "reduce" in low or opcode == "reduce":
    return "reduction"
  return "elementwise/other"


def trace_ops(run, steps: int, hlo_text: str) -> dict:
  """Runs `run()` `steps` times under the profiler; returns per-op and per-part seconds."""
  meta = hlo_metadata(hlo_text)
  trace_dir = tempfile.mkdtemp(prefix="profile_ops_")
  wall = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      jax.block_until_ready(run())
  wall = (time.perf_counter() - wall) / steps
  path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        if "hlo_op" in stats:
          per_op[stats["hlo_op"]] += ev.duration_ns * 1e-9 / steps
  total = sum(per_op.values())
  parts, kinds, modules, rows = (collections.Counter(), collections.Counter(), collections.Counter(),
                                 [])
  for name, secs in per_op.most_common():
    opcode, op = meta.get(name, ("?", ""))
    part, kind = part_of(op, opcode), kind_of(op, opcode, name)
    module = module_part(op, opcode)
    parts[part] += secs
    kinds[kind] += secs
    modules[module] += secs
    rows.append(dict(op=name, seconds=secs, share=secs / total, part=part, kind=kind, module=module,
                     source=re.sub(r"^jit\([^)]*\)/", "", op)[-110:]))
  return dict(wall_s_per_run=wall, op_s_per_run=total, ops=rows,
              parts={k: dict(seconds=v, share=v / total) for k, v in parts.most_common()},
              kinds={k: dict(seconds=v, share=v / total) for k, v in kinds.most_common()},
              modules={k: dict(seconds=v, share=v / total) for k, v in modules.most_common()})


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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("train", "t2i"), default="train")
  p.add_argument("--config", default=None, help="default: small_train (train), small (t2i)")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--json", default=None)
  p.add_argument("--xla-dump", default=None, help="also write the optimised HLO text here")
  from showo2_jax.train import config_overrides  # pylint: disable=import-outside-toplevel
  config_overrides.accept_overrides(p)
  args = p.parse_args(argv)
  name = args.config or ("small_train" if args.task == "train" else "small")
  build = train_program if args.task == "train" else t2i_program
  run, hlo = build(name, args.config_overrides)
  jax.block_until_ready(run())  # warm
  if args.xla_dump:
    os.makedirs(args.xla_dump, exist_ok=True)
    with open(os.path.join(args.xla_dump, f"{args.task}_{name}.hlo.txt"), "w") as f:
      f.write(hlo)
  res = trace_ops(run, args.steps, hlo)
  res.update(task=args.task, config=name, load_avg_1m=os.getloadavg()[0], cpu_count=os.cpu_count())
  print(f"{args.task} [{name}]: {res['wall_s_per_run']:.3f} s wall per run, "
        f"{res['op_s_per_run']:.3f} s op time (summed over threads), load {res['load_avg_1m']:.2f}")
  print("\nby part of the model:")
  for k, v in res["parts"].items():
    print(f"  {k:<34} {v['seconds']:8.3f} s  {100 * v['share']:5.1f}%")
  print("\nby module (the parts of benchmarks/reference_breakdown.py; share x wall = seconds):")
  for k, v in res["modules"].items():
    print(f"  {k:<34} {v['share'] * res['wall_s_per_run']:8.3f} s  {100 * v['share']:5.1f}%")
  print("\nby kind of op:")
  for k, v in res["kinds"].items():
    print(f"  {k:<34} {v['seconds']:8.3f} s  {100 * v['share']:5.1f}%")
  print(f"\ntop {args.top} ops:")
  for r in res["ops"][:args.top]:
    print(f"  {100 * r['share']:5.1f}%  {r['seconds']:7.3f} s  {r['kind']:<16} {r['part']:<30} {r['source']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
