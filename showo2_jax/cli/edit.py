"""`showo2-jax edit`: image editing, (source image, instruction) -> edited PNG.

  showo2-jax edit --checkpoint CKPT --tokenizer QWEN --vae WAN \\
      --image cat.png "make it red" --steps 50 --guidance 7.5 --out edits/

The source is center-cropped to the generation resolution, encoded by the VAE
and placed as a clean visual block before the instruction
(`[bos] [boi] source [eoi] instruction [boi] target [eoi]`); the flow head
generates the target. Guidance keeps the source and drops the instruction.
Several instructions edit the same image; several --image pair with one
instruction each (or all with one). A released Show-o2 checkpoint was not
trained to edit: fine-tune with the `edit` data task first (docs/serve.md).
"""
from __future__ import annotations

import argparse
import json
from showo2_jax import paths
from showo2_jax.cli.main import CliError
from showo2_jax.sample import cli_args, media
from showo2_jax.sample.pipeline import FlowSampling, PromptTooLongError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli_args.add_model_arguments(parser)
  parser.add_argument("instructions", nargs="+", help="editing instructions")
  parser.add_argument("--image", action="append", required=True, help="source image (repeat)")
  parser.add_argument("--out", default="edits", help="output directory")
  parser.add_argument("--steps", type=int, help="ODE grid points; default 50")
  parser.add_argument("--guidance", type=float, help="CFG scale (0 = no CFG); default 7.5")
  parser.add_argument("--batch-size", type=int, default=1)
  parser.add_argument("--truncate", action="store_true",
                      help="truncate instructions longer than the context instead of failing")


def run(args) -> int:
  try:
    cli_args.check_model_arguments(args)
    cli_args.check_flags(args, {"--steps": (lambda v: v >= 2, "at least 2 (grid points)"),
                                "--guidance": cli_args.NON_NEGATIVE,
                                "--batch-size": cli_args.POSITIVE})
    cli_args.make_output_dir("--out", args.out)
  except cli_args.InferenceSetupError as e:
    raise CliError(str(e)) from None
  paths_, instructions = list(args.image), list(args.instructions)
  if len(paths_) == 1:
    paths_ = paths_ * len(instructions)
  elif len(instructions) == 1:
    instructions = instructions * len(paths_)
  elif len(paths_) != len(instructions):
    raise CliError(f"{len(paths_)} images but {len(instructions)} instructions "
                   "(give one of either, or as many of each)")
  d = cli_args.sample_default
  sampling = FlowSampling(
      num_steps=args.steps or d(args, "num_steps", 50),
      guidance_scale=args.guidance if args.guidance is not None else d(args, "guidance_scale", 7.5),
      time_shifting_factor=d(args, "time_shifting_factor", 3.0))
  try:
    sources = [media.load_image(p) for p in paths_]  # fail before loading the model
    pipe = cli_args.load_pipeline(args, need_vae=True)
    latents = pipe.edit(sources, instructions, sampling, seed=args.seed,
                        batch_size=args.batch_size, truncate=args.truncate,
                        show_progress=cli_args.show_progress(args))
  except (cli_args.InferenceSetupError, PromptTooLongError, media.ImageLoadError) as e:
    raise CliError(str(e)) from None
  written = []
  for i, image in enumerate(pipe.decode(latents)):
    written.append(str(media.save_png(image, paths.join(args.out, f"{i:05d}.png"))[0]))
  paths.write_text(paths.join(args.out, "edits.json"), json.dumps(
      [{"file": paths.name(w), "source": s, "instruction": q}
       for w, s, q in zip(written, paths_, instructions)], indent=1))
  for w in written:
    print(w)
  return 0
