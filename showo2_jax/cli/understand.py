"""`showo2-jax understand`: an image (or a video) and questions -> answers.

  showo2-jax understand --checkpoint CKPT --tokenizer QWEN --vae WAN \\
      --image cat.jpg --question "What is in the image?"
  showo2-jax understand ... --video clip.mp4 --num-frames 32 --question "What happens?"

Several --image are one question about all of them together (one visual
block per image, the LLaVA-OneVision multi-image layout; put `<image>` markers
in the question to place them, otherwise they come first):

  showo2-jax understand ... --image a.jpg --image b.jpg --question "What changed?"

To ask separate questions instead (a batch), add --separate: each image gets
the one question, or the i-th image the i-th question; or run `--batch-file
items.jsonl` with one {"image": "a.jpg" | ["a.jpg", "b.jpg"], "question": "..."}
per line. Questions may also be joined with ' *** ' as in the original script
(each asked separately). Decoding is greedy by default (as the original);
--temperature / --top-k / --top-p sample.
"""
from __future__ import annotations

import argparse
import json

from showo2_jax import paths
from showo2_jax.cli.main import CliError
from showo2_jax.data import media as data_media
from showo2_jax.sample import cli_args, media
from showo2_jax.sample.pipeline import PromptTooLongError
from showo2_jax.sample.tokens import TokenSampling


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli_args.add_model_arguments(parser)
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--image", action="append",
                   help="image file; repeat for one question about several images")
  src.add_argument("--video", help="video file (or a folder of frames)")
  src.add_argument("--batch-file", help="JSONL: {\"image\": path or [paths], \"question\": ...} "
                                        "per line, each answered separately")
  parser.add_argument("--question", action="append",
                      help="question (repeat, or join with ' *** ')")
  parser.add_argument("--separate", action="store_true",
                      help="several --image: a batch of separate questions, not one question "
                           "about all of them")
  parser.add_argument("--max-new-tokens", type=int, help="default 300")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--num-frames", type=int, default=32, help="frames sampled from a video")
  parser.add_argument("--batch-size", type=int, default=1)
  parser.add_argument("--parity-mode", action="store_true",
                      help="the original scripts' prompt layout, off-by-one visual block included")
  parser.add_argument("--sample-posterior", action="store_true",
                      help="sample the VAE posterior as the original (default: its mean)")
  parser.add_argument("--json", help="also write the answers to this JSON file")
  parser.add_argument("--truncate", action="store_true",
                      help="keep the first 512 tokens of an over-long question instead of failing")


def _questions(args) -> list[str]:
  return [q.strip() for arg in args.question for q in arg.split(" *** ") if q.strip()]


def check_arguments(args) -> None:
  """Every flag checked before anything is loaded (one-line errors naming the flag)."""
  cli_args.check_model_arguments(args)
  cli_args.check_flags(args, {
      "--max-new-tokens": cli_args.POSITIVE, "--temperature": cli_args.NON_NEGATIVE,
      "--top-k": (lambda v: v >= 0, "an integer >= 0"), "--top-p": cli_args.UNIT_INTERVAL,
      "--num-frames": cli_args.POSITIVE, "--batch-size": cli_args.POSITIVE})
  cli_args.check_output_file("--json", args.json)


def run(args) -> int:
  if args.batch_file:
    return _run_batch_file(args)
  questions = _questions(args) if args.question else []
  if not questions:
    raise CliError("--question is required (and must not be empty)")
  try:
    check_arguments(args)
    sampling = TokenSampling(args.temperature, args.top_k, args.top_p)
  except ValueError as e:
    raise CliError(str(e)) from None
  max_new = args.max_new_tokens or cli_args.sample_default(args, "max_new_tokens", 300)
  kw = dict(sampling=sampling, max_new_tokens=max_new, parity_mode=args.parity_mode,
            seed=args.seed, sample_posterior=args.sample_posterior, truncate=args.truncate,
            show_progress=cli_args.show_progress(args))
  results = []
  try:
    if args.image:
      images = [media.load_image(p) for p in args.image]  # fail before loading the model
      pipe = cli_args.load_pipeline(args, need_vae=True)
      if not args.separate or len(images) == 1:  # every question about all the images
        pairs = [(args.image if len(images) > 1 else args.image[0], images, q) for q in questions]
      elif len(questions) == 1:
        pairs = [(p, [im], questions[0]) for p, im in zip(args.image, images)]
      elif len(images) == len(questions):
        pairs = [(p, [im], q) for p, im, q in zip(args.image, images, questions)]
      else:
        raise CliError(f"--separate: {len(images)} images but {len(questions)} questions "
                       "(give one question, or one per image)")
      pipe.check_questions([q for _, _, q in pairs], args.parity_mode, args.truncate,
                           [len(ims) for _, ims, _ in pairs])
      answers = pipe.understand([ims for _, ims, _ in pairs], [q for _, _, q in pairs],
                                batch_size=args.batch_size, **kw)
      results = [{"image": p, "question": q, "answer": a} for (p, _, q), a in zip(pairs, answers)]
    else:
      try:
        frames = data_media.read_video_frames(args.video, args.num_frames)
      except data_media.MediaError as e:
        raise CliError(str(e)) from None
      pipe = cli_args.load_pipeline(args, need_vae=True)
      pipe.check_questions(questions, args.parity_mode, args.truncate)
      for q in questions:
        results.append({"video": args.video, "question": q,
                        "answer": pipe.understand_video(frames, q, **kw)})
  except (cli_args.InferenceSetupError, PromptTooLongError, media.ImageLoadError) as e:
    raise CliError(str(e)) from None
  return _print_results(results, args.json)


def _run_batch_file(args) -> int:
  """--batch-file: each line's images and question answered separately, in order."""
  if args.question:
    raise CliError("--batch-file carries its questions: drop --question")
  items = []
  try:
    with paths.open(args.batch_file) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          item = json.loads(line)
          image_paths = item["image"] if isinstance(item["image"], list) else [item["image"]]
          question = str(item["question"])
        except (ValueError, KeyError, TypeError):
          raise CliError(f"{args.batch_file}:{n}: expected {{\"image\": path or [paths], "
                         f"\"question\": text}}") from None
        items.append((image_paths, question))
  except OSError as e:
    raise CliError(f"--batch-file: {e}") from None
  if not items:
    raise CliError(f"--batch-file: {args.batch_file} has no items")
  try:
    check_arguments(args)
    sampling = TokenSampling(args.temperature, args.top_k, args.top_p)
    images = [[media.load_image(p) for p in image_paths] for image_paths, _ in items]
    pipe = cli_args.load_pipeline(args, need_vae=True)
    questions = [q for _, q in items]
    pipe.check_questions(questions, args.parity_mode, args.truncate, [len(i) for i in images])
    answers = pipe.understand(
        images, questions, batch_size=args.batch_size, sampling=sampling,
        max_new_tokens=args.max_new_tokens or cli_args.sample_default(args, "max_new_tokens", 300),
        parity_mode=args.parity_mode, seed=args.seed, sample_posterior=args.sample_posterior,
        truncate=args.truncate, show_progress=cli_args.show_progress(args))
  except (ValueError, cli_args.InferenceSetupError, media.ImageLoadError) as e:
    raise CliError(str(e)) from None
  results = [{"image": p if len(p) > 1 else p[0], "question": q, "answer": a}
             for (p, q), a in zip(items, answers)]
  return _print_results(results, args.json)


def _print_results(results: list[dict], json_path) -> int:
  """Prints each question and answer; also writes them to `json_path` when given."""
  for r in results:
    print(f"Q: {r['question']}\nA: {r['answer']}")
  if json_path:
    paths.write_text(json_path, json.dumps(results, indent=1))
  return 0
