"""Input pipeline throughput on this machine: batches/s and images/s per pipeline.

    python benchmarks/data_benchmark.py --workers 0 2 --threads 2 --resolution 432

Writes a synthetic dataset (random-noise JPEGs, captions, LLaVA conversations,
VIST stories) to a temporary folder, then times each training pipeline after a
warm-up. Uses the tiny test tokenizer (the real Qwen tokenizer is not available
offline; tokenizing is a small share of the cost next to image decoding and
bicubic resizing). "images" counts the visual slots actually used.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_dataset(root: str, num: int, size: tuple[int, int]) -> dict[str, str]:
  from showo2_jax.data import testing  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  lines, llava, stories = [], [], []
  for i in range(num):
    rel = os.path.join("images", f"{i:05d}.jpg")
    testing.random_image(rng, *size).save(os.path.join(root, rel), quality=90)
    caption = f"The image features a photo number {i} of a cat sitting on a table in the park. " * 3
    lines.append({"path": rel, "prompt": caption})
    llava.append({"image": rel, "conversations": [
        {"from": "human", "value": "What is in the image?\n<image>"},
        {"from": "gpt", "value": caption}]})
    if i % 5 == 4:
      stories.append({"images": [os.path.join("images", f"{j:05d}") for j in range(i - 4, i + 1)],
                      "captions": [f"part {j}: the dog runs in the park." for j in range(5)]})
  paths = {"jsonl": os.path.join(root, "t2i.jsonl"), "llava": os.path.join(root, "llava.json"),
           "vist": os.path.join(root, "vist.json")}
  with open(paths["jsonl"], "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in lines)
  with open(paths["llava"], "w") as f:
    json.dump(llava, f)
  with open(paths["vist"], "w") as f:
    json.dump(stories, f)
  return paths


def pipelines(paths, tok, special, resolution, max_seq_len, latents_dir):
  """name -> list of (stream name, records, task, batch size)."""
  from showo2_jax.data import sources, tasks  # pylint: disable=import-outside-toplevel
  kw = dict(resolution=resolution, max_seq_len=max_seq_len)
  t2i = tasks.ImageTextTask(tok, special, **kw)
  cap = tasks.ImageTextTask(tok, special, captioning=True, **kw)
  llava = tasks.LlavaTask(tok, special, stage="tuning", **kw)
  vist = tasks.VistTask(tok, special, resolution=resolution, max_seq_len=4 * max_seq_len + 256)
  images = sources.image_text_source(paths["jsonl"])
  return {
      "t2i (bs 8)": [("t2i", images, t2i, 8)],
      "stage1 mix (t2i 6 + captioning 2)": [("t2i", images, t2i, 6), ("mmu", images, cap, 2)],
      "stage2 mix (t2i 4 + llava 4)": [("t2i", images, t2i, 4),
                                       ("mmu", sources.llava_source(paths["llava"]), llava, 4)],
      "vist (bs 2 x 4 images)": [("vist", sources.vist_source(paths["vist"]), vist, 2)],
      "t2i from latents (bs 8)": [("t2i", sources.array_record_source(latents_dir), t2i, 8)],
  }


def time_pipeline(streams, workers, threads, warmup, batches):
  from showo2_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  ds = pipeline.mixed_batches([pipeline.Stream(*s) for s in streams], seed=0, read_threads=threads)
  it = iter(pipeline.make_loader(ds, num_workers=workers))
  for _ in range(warmup):
    next(it)
  images = 0
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    images += int((batch["modality_positions"][..., 1] > 0).sum())
  elapsed = time.perf_counter() - start
  if workers:
    it.close()
  return batches / elapsed, images / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=int, default=432)
  parser.add_argument("--max-seq-len", type=int, default=1024)
  parser.add_argument("--source-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
  parser.add_argument("--num-images", type=int, default=100)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--only", default="", help="run pipelines whose name contains this")
  args = parser.parse_args()

  from showo2_jax.train.latents import pool_encoder  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from showo2_jax.data import precompute, sources, tasks, testing, tokenizer
  with tempfile.TemporaryDirectory() as root:
    paths = write_dataset(root, args.num_images, tuple(args.source_size))
    tok, special = tokenizer.load_tokenizer(testing.build_test_tokenizer(os.path.join(root, "tok")))
    latents_dir = os.path.join(root, "latents")
    precompute.precompute_latents(
        precompute.with_pixels(sources.image_text_source(paths["jsonl"]),
                               tasks.pixel_loader("image_text", args.resolution)),
        pool_encoder, latents_dir, process_index=0, process_count=1, progress=False)
    shards = sorted(os.path.join(latents_dir, f) for f in os.listdir(latents_dir))
    print(f"cpu cores: {os.cpu_count()}, resolution {args.resolution}, source images "
          f"{args.source_size[0]}x{args.source_size[1]} JPEG, read threads {args.threads}")
    print(f"{'pipeline':40s} {'workers':>7s} {'batches/s':>10s} {'images/s':>9s}")
    for name, streams in pipelines(paths, tok, special, args.resolution, args.max_seq_len,
                                   shards).items():
      if args.only not in name:
        continue
      for workers in args.workers:
        bps, ips = time_pipeline(streams, workers, args.threads, args.warmup, args.batches)
        print(f"{name:40s} {workers:7d} {bps:10.2f} {ips:9.1f}", flush=True)


if __name__ == "__main__":
  main()
