"""`showo2-jax eval`: sample folders for the paper's text-to-image benchmarks.

  showo2-jax eval geneval --checkpoint CKPT --tokenizer QWEN --vae WAN \\
      --prompts geneval/prompts/evaluation_metadata.jsonl --out samples/geneval \\
      [--rewritten-prompts prompts/geneval_meta_data_rewritten.jsonl]
  showo2-jax eval dpg ... --prompts ELLA/dpg_bench/prompts --out samples/dpg

Then score with the benchmarks' own scripts (GenEval's evaluate_images.py,
DPG-Bench's compute_dpg_bench.py). Both commands resume (finished items are
skipped) and shard over hosts (--num-shards / --shard-index, default: this
JAX process of all). Layouts, seeds and defaults: showo2_jax/sample/benchmarks.py
and docs/serve.md. Understanding benchmarks run through lmms-eval against
`showo2-jax serve` (docs/serve.md).
"""
from __future__ import annotations

import argparse
import dataclasses

from showo2_jax.cli.main import CliError
from showo2_jax.sample import cli_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
  for name, help_, defaults in (
      ("geneval", "GenEval: <index>/metadata.jsonl + samples/0000.png ... per prompt",
       "100 steps, guidance 7.5"),
      ("dpg", "DPG-Bench: one 2x2 grid <name>.png per prompt file", "50 steps, guidance 10")):
    p = sub.add_parser(name, help=help_, description=help_)
    cli_args.add_model_arguments(p)
    p.add_argument("--prompts", required=True,
                   help="GenEval: evaluation_metadata.jsonl; DPG: the prompts folder of .txt "
                        "files (or the original's dpg_bench_meta_data.json)")
    p.add_argument("--out", required=True, help="output folder (local or gs://)")
    if name == "geneval":
      p.add_argument("--rewritten-prompts",
                     help="JSONL of rewritten prompts, line for line (the paper's "
                          "geneval_meta_data_rewritten.jsonl): generate from these")
      p.add_argument("--samples", type=int, default=4, help="images per prompt")
    p.add_argument("--steps", type=int, help=f"ODE grid points (default: {defaults})")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch")
    p.add_argument("--num-shards", type=int, help="hosts sharing the prompts (default: JAX processes)")
    p.add_argument("--shard-index", type=int, help="this host's shard (default: JAX process index)")


def run(args) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from showo2_jax import paths  # pylint: disable=g-import-not-at-top
  from showo2_jax.sample import benchmarks  # pylint: disable=g-import-not-at-top
  base = benchmarks.GENEVAL_SAMPLING if args.benchmark == "geneval" else benchmarks.DPG_SAMPLING
  sampling = dataclasses.replace(
      base, num_steps=args.steps or base.num_steps,
      guidance_scale=base.guidance_scale if args.guidance is None else args.guidance)
  if sampling.num_steps < 2:
    raise CliError("--steps must be at least 2 (grid points)")
  if args.batch_size < 1 or getattr(args, "samples", 4) < 1:
    raise CliError("--batch-size and --samples must be >= 1")
  num_shards = args.num_shards or jax.process_count()
  shard_index = jax.process_index() if args.shard_index is None else args.shard_index
  if not paths.exists(args.prompts):
    raise CliError(f"--prompts: '{args.prompts}' does not exist")
  try:
    if args.benchmark == "geneval":
      items = benchmarks.read_geneval(args.prompts, args.rewritten_prompts)
    else:
      items = benchmarks.read_dpg(args.prompts)
    mine = benchmarks.shard(items, num_shards, shard_index)
  except (ValueError, OSError) as e:
    raise CliError(str(e)) from None
  try:
    pipe = cli_args.load_pipeline(args, need_vae=True)
  except cli_args.InferenceSetupError as e:
    raise CliError(str(e)) from None
  kw = dict(sampling=sampling, seed=args.seed, batch_size=args.batch_size,
            show_progress=cli_args.show_progress(args))
  if args.benchmark == "geneval":
    n = benchmarks.write_geneval(pipe, mine, args.out, samples=args.samples, **kw)
  else:
    n = benchmarks.write_dpg(pipe, mine, args.out, **kw)
  print(f"{args.benchmark}: shard {shard_index} of {num_shards}: {len(mine)} prompts "
        f"({n} written now, {len(mine) - n} already there) in {args.out}")
  return 0
