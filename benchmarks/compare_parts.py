"""Ours against the original, part by part, with model FLOPs and GFLOP/s per part.

    python benchmarks/profile_ops.py --task train --steps 1 --json ours.json
    REF=REF/show-o2 PYTHONPATH=REF/stub REF/venv/bin/python benchmarks/reference_breakdown.py \
        --steps 1 --json original.json
    python benchmarks/compare_parts.py --ours ours.json --original original.json

Our seconds per part are the part's share of the traced op time (profile_ops.py "by
module") times the traced step's wall time; the original's are its profiler's self
times per part scaled to its untraced step (reference_breakdown.py). FLOPs per part
are the model formula's (showo2_jax.train.flops.train_flops_by_part: 3 x forward
matmuls, the lm_head at every position, full L x L attention), the same for both, so
GFLOP/s compares what each program gets through per second of that part. The lm_head
and the NTP loss are one part (ours applies the head inside the loss). Run the two
back to back: on a loaded machine the per-part ratios carry the load's drift.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (row, our parts, the original's parts)
ROWS = [
    ("LLM attention", ["LLM attention"], ["LLM attention"]),
    ("LLM MLP", ["LLM MLP"], ["LLM MLP"]),
    ("LLM norms/residuals", ["LLM norms/residuals"], ["LLM norms/residuals"]),
    ("lm_head + NTP loss", ["lm_head + NTP loss"], ["lm_head", "NTP loss"]),
    ("SigLIP", ["SigLIP"], ["SigLIP"]),
    ("flow head attention", ["flow head attention"], ["flow head attention"]),
    ("flow head rest", ["flow head rest"], ["flow head rest"]),
    ("projector/STF", ["projector/STF"], ["projector/STF"]),
    ("FM loss", ["FM loss"], ["FM loss"]),
    ("optimizer", ["optimizer (AdamW + clip)"], ["optimizer"]),
    ("other", ["other", "loop/cond control, unnamed copies"], ["other"]),
]


def table(ours: dict, original: dict, flops_by_part: dict) -> list:
  wall = ours["wall_s_per_run"]
  o_s = {k: v["share"] * wall for k, v in ours["modules"].items()}
  r_s = {k: v["total_s"] for k, v in original["parts"].items()}
  out = []
  for row, mine, theirs in ROWS:
    f = flops_by_part.get("lm_head" if row.startswith("lm_head") else row)
    a, b = sum(o_s.get(k, 0.0) for k in mine), sum(r_s.get(k, 0.0) for k in theirs)
    out.append(dict(part=row, gflop=f / 1e9 if f else None, ours_s=a, original_s=b,
                    ours_gflops=f / a / 1e9 if f and a else None,
                    original_gflops=f / b / 1e9 if f and b else None,
                    original_over_ours=b / a if a else None))
  out.append(dict(part="step", gflop=sum(flops_by_part.values()) / 1e9, ours_s=wall,
                  original_s=original["step_s"], ours_gflops=sum(flops_by_part.values()) / wall / 1e9,
                  original_gflops=sum(flops_by_part.values()) / original["step_s"] / 1e9,
                  original_over_ours=original["step_s"] / wall))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ours", required=True, help="profile_ops.py --task train --json")
  p.add_argument("--original", required=True, help="reference_breakdown.py --json")
  p.add_argument("--config", default="small_train")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  from showo2_jax.config_lib import load_config  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.config import Showo2Config  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import data as data_lib, flops  # pylint: disable=import-outside-toplevel
  config = load_config(args.config)
  with open(args.ours) as f:
    ours = json.load(f)
  with open(args.original) as f:
    original = json.load(f)
  by_part = flops.train_flops_by_part(Showo2Config.from_config_dict(config.model), int(config.max_seq_len),
                                      data_lib.slots_per_row(config), int(config.train.global_batch_size))
  rows = table(ours, original, by_part)
  fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
  print(f"ours: {ours['wall_s_per_run']:.2f} s traced step, load {ours.get('load_avg_1m', 0):.1f}; "
        f"original: {original['step_s']:.2f} s step, load {original.get('load_avg_1m', 0):.1f}")
  print("| part | model GFLOP | original s | ours s | original GFLOP/s | ours GFLOP/s | original s / ours s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['part']} | {fmt(r['gflop'], '{:.1f}')} | {fmt(r['original_s'])} | {fmt(r['ours_s'])} | "
          f"{fmt(r['original_gflops'], '{:.0f}')} | {fmt(r['ours_gflops'], '{:.0f}')} | "
          f"{fmt(r['original_over_ours'])} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
