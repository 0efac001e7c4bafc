"""`showo2-jax serve` under load: latency p50 / p95 and throughput of mixed requests.

Starts the server in this process on 127.0.0.1 (a free port) with random weights
of a config (default `small`), the test tokenizer and the Wan VAE fixture (or
--vae), then fires `--requests` requests from `--concurrency` client threads
through HTTP: a mix of text chats, chats about one image, chats about two images
(streamed) and image generations. A first identical round warms every batch
bucket up (compilation excluded from the timed round; pass --warmup-rounds 0 to
include it). Prints a table and, with --json, one JSON object; --out writes
that object to a file or URI. Progress (model built, each round's wall time)
goes to stderr.

  python benchmarks/serve_benchmark.py                          # small, CPU
  python benchmarks/serve_benchmark.py --config tiny --requests 16
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_benchmark import random_params  # pylint: disable=g-import-not-at-top,wrong-import-position

from showo2_jax import paths  # pylint: disable=wrong-import-position
from showo2_jax.config_lib import load_config  # pylint: disable=wrong-import-position
from showo2_jax.data import testing  # pylint: disable=wrong-import-position
from showo2_jax.data import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
from showo2_jax.models.config import Showo2Config  # pylint: disable=wrong-import-position
from showo2_jax.convert import loading  # pylint: disable=wrong-import-position
from showo2_jax.sample import pipeline  # pylint: disable=wrong-import-position
from showo2_jax.serve import api, engine as engine_lib  # pylint: disable=wrong-import-position

DEFAULT_VAE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "wan_vae")


def start_server(srv: api.Server):
  import uvicorn  # pylint: disable=g-import-not-at-top
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.bind(("127.0.0.1", 0))
  userver = uvicorn.Server(uvicorn.Config(api.create_app(srv), log_level="warning"))
  thread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  while not userver.started:
    time.sleep(0.05)
  return userver, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def png_data_uri(seed: int, w: int, h: int) -> str:
  buf = io.BytesIO()
  testing.random_image(np.random.default_rng(seed), w, h).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_mix(n: int, max_tokens: int, image_every: int, image_steps: int) -> list:
  im0 = {"type": "image_url", "image_url": {"url": png_data_uri(0, 500, 400)}}
  im1 = {"type": "image_url", "image_url": {"url": png_data_uri(1, 400, 480)}}
  chats = [
      {"messages": [{"role": "user", "content": "Write a short poem about the sea."}],
       "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9},
      {"messages": [{"role": "user", "content": [im0, {"type": "text", "text": "Describe it."}]}],
       "max_tokens": max_tokens},
      {"messages": [{"role": "user", "content": [im0, im1, {"type": "text",
                                                            "text": "What differs?"}]}],
       "max_tokens": max_tokens, "stream": True},
  ]
  out = []
  for i in range(n):
    if image_every and i % image_every == image_every - 1:
      out.append(("/v1/images/generations", {"prompt": "a red apple on a table", "n": 1,
                                             "seed": i, "num_inference_steps": image_steps}))
    else:
      out.append(("/v1/chat/completions", chats[i % len(chats)]))
  return out


def run_round(base: str, jobs: list, concurrency: int) -> tuple[list, float]:
  import httpx  # pylint: disable=g-import-not-at-top

  def call(job):
    path, body = job
    t0 = time.perf_counter()
    r = httpx.post(base + path, json=body, timeout=3600)
    if r.status_code != 200:
      raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
    return path, time.perf_counter() - t0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    results = list(pool.map(call, jobs))
  return results, time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="small")
  p.add_argument("--vae", default=DEFAULT_VAE, help="Wan VAE (default: the small test fixture)")
  p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 otherwise")
  p.add_argument("--requests", type=int, default=32)
  p.add_argument("--concurrency", type=int, default=32)
  p.add_argument("--max-tokens", type=int, default=32)
  p.add_argument("--image-every", type=int, default=8, help="every k-th request is an image (0: none)")
  p.add_argument("--image-steps", type=int, default=10, help="ODE grid points per image")
  p.add_argument("--max-batch-size", type=int, default=8)
  p.add_argument("--batch-window-ms", type=float, default=10.0)
  p.add_argument("--warmup-rounds", type=int, default=1)
  p.add_argument("--json", action="store_true", help="print the report as one JSON object")
  p.add_argument("--out", default=None, help="also write the JSON report to this file or URI")
  args = p.parse_args()

  dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
  cfg = load_config(args.config)
  config = Showo2Config.from_config_dict(cfg.model).replace(dtype=dtype, param_dtype=dtype)
  params = random_params(config, getattr(jax.numpy, dtype))
  with tempfile.TemporaryDirectory() as tmp:
    tok, special = tokenizer_lib.load_tokenizer(testing.build_test_tokenizer(os.path.join(tmp, "tok")))
  vae = loading.load_vae(args.vae)
  pipe = pipeline.Pipeline(config, params, tok, special, vae, resolution=cfg.resolution,
                           max_seq_len=cfg.max_seq_len)
  eng = engine_lib.Engine(pipe, max_batch=args.max_batch_size,
                          window_s=args.batch_window_ms / 1000, max_new_tokens=256).start()
  srv = api.Server(eng, model_name=args.config)
  userver, thread, base = start_server(srv)
  jobs = request_mix(args.requests, args.max_tokens, args.image_every, args.image_steps)
  progress = lambda msg: print(f"[serve_benchmark] {msg}", file=sys.stderr, flush=True)
  progress(f"{args.config} model ready ({dtype}); serving on {base}")
  try:
    for i in range(args.warmup_rounds):
      _, wall = run_round(base, jobs, args.concurrency)
      progress(f"warm-up round {i + 1}/{args.warmup_rounds} (compiles every bucket): {wall:.1f} s")
    before = dict(eng.stats)
    results, wall = run_round(base, jobs, args.concurrency)
    progress(f"timed round: {wall:.1f} s")
  finally:
    userver.should_exit = True
    thread.join(timeout=30)
    eng.stop()
  lat = np.asarray([t for _, t in results])
  chat = np.asarray([t for path, t in results if "chat" in path])
  img = np.asarray([t for path, t in results if "images" in path])
  report = {
      "config": args.config, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "machine": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(), "dtype": dtype, "requests": len(jobs),
      "concurrency": args.concurrency, "max_tokens": args.max_tokens,
      "image_requests": int(img.size), "image_steps": args.image_steps,
      "max_batch_size": args.max_batch_size, "batch_window_ms": args.batch_window_ms,
      "wall_s": round(wall, 3), "throughput_req_s": round(len(jobs) / wall, 3),
      "p50_s": round(float(np.percentile(lat, 50)), 3),
      "p95_s": round(float(np.percentile(lat, 95)), 3),
      "chat_p50_s": round(float(np.percentile(chat, 50)), 3) if chat.size else None,
      "image_p50_s": round(float(np.percentile(img, 50)), 3) if img.size else None,
      "batches": eng.stats["batches"] - before["batches"],
      "warm": args.warmup_rounds > 0,
  }
  if args.out:
    paths.write_text(args.out, json.dumps(report, indent=1) + "\n")
  if args.json:
    print(json.dumps(report))
  else:
    print(f"serve load, {report['config']} on {report['backend']} ({report['device']}, "
          f"{report['cpu_count']} CPUs), {dtype}: {len(jobs)} requests, {args.concurrency} "
          f"concurrent, {report['image_requests']} images ({args.image_steps} steps)")
    print("| p50 s | p95 s | chat p50 s | image p50 s | req/s | batches |")
    print("|---|---|---|---|---|---|")
    print(f"| {report['p50_s']} | {report['p95_s']} | {report['chat_p50_s']} | "
          f"{report['image_p50_s']} | {report['throughput_req_s']} | {report['batches']} |")


if __name__ == "__main__":
  main()
