"""`showo2-jax eval-shapes --workdir DIR [--json OUT]`: how well a shapes run learned.

On the held-out scenes of the run's world (DIR/world/heldout.json: combinations
of size, colour, shape and position that no training file contains) it prints
four fractions (showo2_jax/shapes/report.py):
  gen_colour   generated images whose dominant shape colour is the prompt's
  gen_shape    generated images whose shape is the prompt's
  und_colour   answers to "What colour is the shape?" naming the right colour
  und_shape    answers to "What shape is it?" naming the right shape
Chance is 0.25 for colours and 0.33 for shapes. Targets after the default
`tiny_shapes` run: gen_colour, und_colour, und_shape >= 0.8.
"""
from __future__ import annotations

import argparse
import json
import logging

from showo2_jax import paths
from showo2_jax.cli.main import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a `train --config tiny_shapes` workdir")
  parser.add_argument("--num", type=int, default=None,
                      help="held-out scenes to use (default: all in heldout.json)")
  parser.add_argument("--json", default=None, help="also write the fractions to this JSON file")
  parser.add_argument("--seed", type=int, default=0, help="generation noise seed")


def run(args) -> int:
  for name in ("absl", "orbax"):   # checkpoint loading chatter
    logging.getLogger(name).setLevel(logging.WARNING)
  from showo2_jax.convert import loading  # pylint: disable=import-outside-toplevel
  heldout = paths.join(args.workdir, "world", "heldout.json")
  if not paths.exists(heldout):
    raise CliError(f"--workdir: '{args.workdir}' has no world/heldout.json (not a shapes run; "
                   "make one with `showo2-jax train --config tiny_shapes --workdir DIR`)")
  if loading.resolve_training_run(args.workdir) is None:
    raise CliError(f"--workdir: '{args.workdir}' has no trained Show-o2 phase yet (run "
                   "`showo2-jax train --config tiny_shapes` on it to the end)")
  if args.num is not None and args.num <= 0:
    raise CliError(f"--num {args.num}: must be a positive number")
  from showo2_jax.shapes import report, world  # pylint: disable=import-outside-toplevel
  scenes, size = world.read_heldout(heldout)
  scenes = scenes[:args.num] if args.num else scenes
  pipe, cfg = report.load_pipeline(args.workdir)
  fractions, _ = report.evaluate(pipe, cfg, scenes, size, seed=args.seed)
  print(f"on {len(scenes)} held-out scenes (prompts and images never trained on; the run's own "
        f"report uses its first {_report_count(args.workdir)}):")
  for k, v in fractions.items():
    target = report.TARGETS.get(k)
    note = f"  (target >= {target}, chance {report.CHANCE[k]:.2f})" if target else \
        f"  (chance {report.CHANCE[k]:.2f})"
    print(f"{k:<11} {v:.3f}{note}")
  if args.json:
    paths.write_text(args.json, json.dumps({"num_scenes": len(scenes), **fractions}, indent=2))
  return 0


def _report_count(workdir: str) -> str:
  """How many held-out scenes the run's report scored (its metrics.json), or '?'."""
  m = paths.read_json(paths.join(workdir, "metrics.json")) or {}
  n = m.get("num_eval")
  return str(n) if n else "?"
