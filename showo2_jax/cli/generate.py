"""`showo2-jax generate`: prompts -> PNG images (or MP4/GIF videos).

  showo2-jax generate --checkpoint CKPT --tokenizer QWEN --vae WAN \\
      "a red fox in the snow" "a lighthouse at dusk" --steps 50 --guidance 7.5 --out out/

With --num-frames 1+4k it generates videos (text-to-video), and with --image
also image-to-video (the image is the first latent frame, kept fixed). Without
--vae the final latents are saved as .npy instead of pixels.
"""
from __future__ import annotations

import argparse
import json
import logging
import numpy as np

from showo2_jax import paths
from showo2_jax.cli.main import CliError
from showo2_jax.flow import transport
from showo2_jax.sample import cli_args, media
from showo2_jax.sample.pipeline import FlowSampling, PromptTooLongError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli_args.add_model_arguments(parser)
  parser.add_argument("prompts", nargs="*", help="text prompts (one image each)")
  parser.add_argument("--prompts-file", help="a text file with one prompt per line")
  parser.add_argument("--out", default="outputs", help="output directory")
  parser.add_argument("--steps", type=int, help="ODE grid points (N points = N-1 steps); default 50")
  parser.add_argument("--guidance", type=float, help="CFG scale (0 = no CFG); default 7.5")
  parser.add_argument("--shift", type=float, help="time shifting factor; default 3.0")
  parser.add_argument("--method", choices=tuple(transport.SAMPLERS), help="ODE solver; default euler")
  parser.add_argument("--batch-size", type=int, default=1, help="prompts per batch")
  parser.add_argument("--num-frames", type=int, default=1, help="video frames (1 + 4k); 1 = image")
  parser.add_argument("--image", help="first frame for image-to-video (needs --num-frames >= 5)")
  parser.add_argument("--fps", type=float, default=8.0)
  parser.add_argument("--video-format", choices=("mp4", "gif"), default="mp4",
                      help="mp4 falls back to gif when no video backend is installed")
  parser.add_argument("--truncate", action="store_true",
                      help="truncate prompts longer than the context instead of failing")


def _prompts(args) -> list[str]:
  prompts = list(args.prompts)
  if args.prompts_file:
    if not paths.exists(args.prompts_file):
      raise CliError(f"--prompts-file: '{args.prompts_file}' does not exist")
    prompts += [line.strip() for line in paths.read_text(args.prompts_file).splitlines() if line.strip()]
  if not prompts:
    raise CliError("no prompts: give them as arguments or with --prompts-file")
  return prompts


def _sampling(args) -> FlowSampling:
  d = cli_args.sample_default
  return FlowSampling(
      num_steps=args.steps if args.steps is not None else d(args, "num_steps", 50),
      guidance_scale=args.guidance if args.guidance is not None else d(args, "guidance_scale", 7.5),
      time_shifting_factor=args.shift if args.shift is not None else d(args, "time_shifting_factor", 3.0),
      method=args.method or d(args, "method", "euler"))


def check_arguments(args) -> None:
  """Every flag checked before anything is loaded or generated (one-line errors)."""
  cli_args.check_model_arguments(args)
  cli_args.check_flags(args, {
      "--steps": cli_args.AT_LEAST_2, "--guidance": cli_args.FINITE,
      "--shift": cli_args.FINITE_POSITIVE, "--batch-size": cli_args.POSITIVE,
      "--num-frames": (lambda v: v >= 1 and (v - 1) % 4 == 0, "1 + 4k (1, 5, 9, 17, ...)"),
      "--fps": cli_args.FINITE_POSITIVE})
  if args.image and args.num_frames < 5:
    raise CliError("--image (image-to-video) needs --num-frames >= 5")
  cli_args.make_output_dir("--out", args.out)


def run(args) -> int:
  try:
    check_arguments(args)
  except cli_args.InferenceSetupError as e:
    raise CliError(str(e)) from None
  prompts = _prompts(args)
  sampling = _sampling(args)
  try:
    pipe = cli_args.load_pipeline(args, need_vae=bool(args.image))
    condition = pipe.image_pixels(media.load_image(args.image)) if args.image else None
    latents = pipe.generate(prompts, sampling, seed=args.seed, batch_size=args.batch_size,
                            num_frames=args.num_frames, condition_image=condition,
                            truncate=args.truncate, show_progress=cli_args.show_progress(args))
  except (cli_args.InferenceSetupError, PromptTooLongError, media.ImageLoadError) as e:
    raise CliError(str(e)) from None
  written = []
  if pipe.vae is None:
    log.warning("no --vae: saving latents (.npy) instead of pixels")
    for i, lat in enumerate(latents):
      path = paths.join(args.out, f"{i:05d}.npy")
      with paths.open(path, "wb") as f:
        np.save(f, lat)
      written.append(path)
  else:
    pixels = pipe.decode(latents)
    for i, item in enumerate(pixels):
      if item.ndim == 4:
        path = media.save_video(item, paths.join(args.out, f"{i:05d}.{args.video_format}"), args.fps)
      else:
        path = media.save_png(item, paths.join(args.out, f"{i:05d}.png"))[0]
      written.append(str(path))
  paths.write_text(paths.join(args.out, "prompts.json"), json.dumps(
      [{"file": paths.name(p), "prompt": q} for p, q in zip(written, prompts)], indent=1))
  for path in written:
    print(path)
  return 0
