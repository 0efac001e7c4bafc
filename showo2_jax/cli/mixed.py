"""`showo2-jax mixed`: interleaved text and images (the original's VIST demo).

  showo2-jax mixed --checkpoint CKPT_MIXED --tokenizer QWEN --vae WAN --out story/

Writes story/story.json (each round's text, the image files) and one PNG per
image. The default prompt is the original's flag "Mixed-modality generation (VIST).".
"""
from __future__ import annotations

import argparse
import json
import numpy as np

from showo2_jax import paths
from showo2_jax.cli.main import CliError
from showo2_jax.data import sequences
from showo2_jax.sample import cli_args, media, mixed
from showo2_jax.sample.pipeline import FlowSampling, PromptTooLongError
from showo2_jax.sample.tokens import TokenSampling


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli_args.add_model_arguments(parser)
  parser.add_argument("--prompt", default=sequences.VIST_FLAG, help="the story's start")
  parser.add_argument("--out", default="outputs/story", help="output directory")
  parser.add_argument("--rounds", type=int, default=4, help="text(/image) rounds (original: 4)")
  parser.add_argument("--max-text-tokens", type=int, default=200, help="per round (original: 200)")
  parser.add_argument("--temperature", type=float, default=1.0, help="text sampling (0 = greedy)")
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--steps", type=int, default=50, help="ODE grid points per image")
  parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale of the first image")
  parser.add_argument("--later-guidance", type=float, default=5.0,
                      help="CFG scale of later images (the original hard-codes 5.0)")
  parser.add_argument("--shift", type=float, default=3.0, help="time shifting factor")
  parser.add_argument("--context-t", type=float, default=1.0,
                      help="time fed with earlier images during text rounds; 1 = clean, as "
                           "training (the original script passes 0, its bug)")


def check_arguments(args) -> None:
  """Every flag checked before anything is loaded (one-line errors naming the flag)."""
  cli_args.check_model_arguments(args)
  cli_args.check_flags(args, {
      "--rounds": cli_args.POSITIVE, "--max-text-tokens": cli_args.POSITIVE,
      "--temperature": cli_args.NON_NEGATIVE, "--top-k": (lambda v: v >= 0, "an integer >= 0"),
      "--top-p": cli_args.UNIT_INTERVAL, "--steps": cli_args.AT_LEAST_2,
      "--guidance": cli_args.FINITE, "--later-guidance": cli_args.FINITE,
      "--shift": cli_args.FINITE_POSITIVE,
      "--context-t": (lambda v: 0 <= v <= 1, "in [0, 1]")})
  cli_args.make_output_dir("--out", args.out)


def run(args) -> int:
  try:
    check_arguments(args)
    sampling = TokenSampling(args.temperature, args.top_k, args.top_p)
  except ValueError as e:
    raise CliError(str(e)) from None
  flow = FlowSampling(num_steps=args.steps, guidance_scale=args.guidance,
                      time_shifting_factor=args.shift)
  try:
    pipe = cli_args.load_pipeline(args)
    story = mixed.generate_story(
        pipe, args.prompt, rounds=args.rounds, text_sampling=sampling,
        max_text_tokens=args.max_text_tokens, flow=flow, later_guidance_scale=args.later_guidance,
        context_t=args.context_t, seed=args.seed, show_progress=cli_args.show_progress(args))
  except (cli_args.InferenceSetupError, PromptTooLongError) as e:
    raise CliError(str(e)) from None
  paths.makedirs(args.out)
  files = []
  if story.latents:
    stacked = np.stack(story.latents)
    if pipe.vae is None:
      files = [f"{i:02d}.npy" for i in range(len(stacked))]
      for name, lat in zip(files, stacked):
        with paths.open(paths.join(args.out, name), "wb") as f:
          np.save(f, lat)
    else:
      files = [f"{i:02d}.png" for i in range(len(stacked))]
      media.save_png(pipe.decode(stacked), [paths.join(args.out, n) for n in files])
  paths.write_text(paths.join(args.out, "story.json"), json.dumps(
      {"prompt": args.prompt, "texts": story.texts, "images": files}, indent=1))
  print(args.prompt)
  for i, text in enumerate(story.texts):
    print(f"[round {i}] {text}")
  for name in files:
    print(paths.join(args.out, name))
  return 0
