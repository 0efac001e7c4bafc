"""`showo2-jax serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn).

  showo2-jax serve --checkpoint CKPT --tokenizer QWEN --vae WAN --port 8000
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Hello"}]}'

Endpoints, batching and the protocol's differences from OpenAI's: see
showo2_jax/serve/api.py and docs/serve.md.
"""
from __future__ import annotations

import argparse
import logging

from showo2_jax.cli.main import CliError
from showo2_jax.sample import cli_args
from showo2_jax.sample.pipeline import FlowSampling

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli_args.add_model_arguments(parser)
  g = parser.add_argument_group("server")
  g.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: every interface)")
  g.add_argument("--port", type=int, default=8000, help="0 picks a free port")
  g.add_argument("--served-model-name", default="show-o2", help="the id /v1/models reports")
  g.add_argument("--max-batch-size", type=int, default=8,
                 help="most rows (chats, or images) in one batched call")
  g.add_argument("--batch-window-ms", type=float, default=10.0,
                 help="how long the oldest waiting request waits for others to batch with")
  g.add_argument("--max-tokens-limit", type=int, default=1024,
                 help="largest max_tokens a chat request may ask for")
  g.add_argument("--default-max-tokens", type=int, default=300)
  g.add_argument("--max-images-per-request", type=int, default=8)
  g.add_argument("--allowed-local-media-path", action="append", default=[],
                 help="directory whose files chat requests may name as image_url (repeat)")
  g.add_argument("--guidance-scale", type=float, help="image default (7.5, or --config's)")
  g.add_argument("--num-inference-steps", type=int, help="image default (50, or --config's)")
  g.add_argument("--compilation-cache-dir", default="~/.cache/showo2_jax/xla",
                 help="persistent XLA cache ('' disables)")
  g.add_argument("--warmup", action="store_true",
                 help="compile the batch-1 buckets before accepting requests")


def build_server(args):
  """(Server, Engine) from parsed arguments; the engine is started."""
  import os  # pylint: disable=g-import-not-at-top
  from showo2_jax.serve import api, engine as engine_lib  # pylint: disable=g-import-not-at-top
  if args.compilation_cache_dir:
    engine_lib.enable_compilation_cache(os.path.expanduser(args.compilation_cache_dir))
  for d in args.allowed_local_media_path:
    if not os.path.isdir(d):
      raise CliError(f"--allowed-local-media-path: '{d}' is not a directory")
  if args.max_batch_size < 1:
    raise CliError("--max-batch-size must be >= 1")
  try:
    cli_args.check_model_arguments(args)
  except cli_args.InferenceSetupError as e:
    raise CliError(str(e)) from None
  try:
    flow = FlowSampling(
        num_steps=args.num_inference_steps or cli_args.sample_default(args, "num_steps", 50),
        guidance_scale=(args.guidance_scale if args.guidance_scale is not None
                        else cli_args.sample_default(args, "guidance_scale", 7.5)),
        time_shifting_factor=cli_args.sample_default(args, "time_shifting_factor", 3.0))
  except ValueError as e:
    raise CliError(f"--guidance-scale / --num-inference-steps: {e}") from None
  try:
    pipe = cli_args.load_pipeline(args, need_vae=True)
  except cli_args.InferenceSetupError as e:
    raise CliError(str(e)) from None
  engine = engine_lib.Engine(pipe, max_batch=args.max_batch_size,
                             window_s=args.batch_window_ms / 1000.0,
                             max_new_tokens=args.max_tokens_limit).start()
  server = api.Server(engine, model_name=args.served_model_name,
                      allowed_local_media_paths=args.allowed_local_media_path,
                      default_max_tokens=args.default_max_tokens,
                      max_images_per_request=args.max_images_per_request, flow=flow)
  return server, engine


def run(args) -> int:
  try:
    import fastapi  # pylint: disable=g-import-not-at-top,unused-import
    import uvicorn  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise CliError(f"serving needs the 'serve' extra ({e.name} is missing): "
                   "pip install 'showo2-jax[serve]'") from None
  from showo2_jax.serve import api  # pylint: disable=g-import-not-at-top
  server, engine = build_server(args)
  try:
    if args.warmup:
      log.info("warming up (compiling the batch-1 buckets)")
      warmup(server)
    config = uvicorn.Config(api.create_app(server), host=args.host, port=args.port,
                            log_level="info", access_log=False)
    uvicorn.Server(config).run()
  finally:
    engine.stop()
  return 0


def warmup(server) -> None:
  """One text chat and one image through the engine (fills the compilation cache)."""
  from showo2_jax.serve import api  # pylint: disable=g-import-not-at-top
  req = api.ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
  server.engine.submit(server.chat_job(req)).result()
  server.engine.submit(server.image_job("a photo", 1, None, None)).result()
