"""Sample folders for the text-to-image benchmarks the paper reports: GenEval and DPG-Bench.

GenEval (github.com/djghosh13/geneval) reads, per prompt of its
`evaluation_metadata.jsonl` (line i, 0-based):

  OUT/<i:05d>/metadata.jsonl      that line, as is
  OUT/<i:05d>/samples/0000.png    ... one PNG per sample (4 by default)

DPG-Bench (ELLA's `dpg_bench/`) reads one PNG per prompt file `<name>.txt`,
`OUT/<name>.png`: a 2 x 2 grid of four samples (the original's
`save_images_as_grid`, filled row by row).

Defaults follow the original's scripts (evaluation/sample_geneval.sh,
sample_dpg.sh): GenEval 100 ODE grid points, guidance 7.5, 4 samples;
DPG-Bench 50 points, guidance 10, 4 samples. The original drew unseeded torch
noise; here sample k of prompt i starts from `initial_noise(fold_in(PRNGKey(seed),
i * samples_per_prompt + k))`, so a sample depends only on (seed, i, k): not on
the batch size, the shard, or a resume.

Both writers are resumable (an item whose files all exist is skipped; files are
written whole, local ones through a rename) and shard over hosts: host h of H
takes the h-th of H contiguous chunks of the items, as the original's
`np.array_split(..., num_devices)`. Paths may be URIs (gs://...).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from showo2_jax import paths
from showo2_jax.flow import transport
from showo2_jax.sample.pipeline import FlowSampling, Pipeline

log = logging.getLogger(__name__)

GENEVAL_SAMPLING = FlowSampling(num_steps=100, guidance_scale=7.5)
DPG_SAMPLING = FlowSampling(num_steps=50, guidance_scale=10.0)


@dataclasses.dataclass(frozen=True)
class Item:
  index: int          # position in the benchmark's prompt list (seeds derive from it)
  prompt: str         # what the model is given
  name: str           # GenEval: the folder "00012"; DPG: the file stem
  metadata: str = ""  # GenEval: the metadata line written as is


# ----------------------------------------------------------------------------- reading prompts

def read_geneval(metadata_file: str, rewritten_file: Optional[str] = None) -> list[Item]:
  """GenEval's metadata JSONL (one object with "prompt" per line).

  `rewritten_file`: the same prompts rewritten (the paper generates from
  `geneval_meta_data_rewritten.jsonl`), line for line; the model gets its
  "prompt", the folder keeps the original metadata line.
  """
  lines = [l for l in paths.read_text(metadata_file).splitlines() if l.strip()]
  rewritten = None
  if rewritten_file:
    rewritten = [l for l in paths.read_text(rewritten_file).splitlines() if l.strip()]
    if len(rewritten) != len(lines):
      raise ValueError(f"{rewritten_file} has {len(rewritten)} prompts but {metadata_file} "
                       f"has {len(lines)}: they must match line for line")
  items = []
  for i, line in enumerate(lines):
    prompt = _prompt_of(line, metadata_file, i)
    if rewritten is not None:
      prompt = _prompt_of(rewritten[i], rewritten_file, i)
    items.append(Item(i, prompt, f"{i:05d}", line.strip()))
  return items


def _prompt_of(line: str, file: str, i: int) -> str:
  try:
    prompt = json.loads(line)["prompt"]
  except (ValueError, KeyError, TypeError):
    raise ValueError(f"{file}:{i + 1}: expected a JSON object with a \"prompt\"") from None
  if not isinstance(prompt, str) or not prompt.strip():
    raise ValueError(f"{file}:{i + 1}: empty prompt")
  return prompt


def read_dpg(prompts: str) -> list[Item]:
  """DPG-Bench prompts: a folder of `<name>.txt` files (sorted by name), or the
  original's JSON list of {"prompt", "prompt_file_name"}."""
  if paths.isdir(prompts):
    names = sorted(n for n in paths.listdir(prompts) if n.endswith(".txt"))
    if not names:
      raise ValueError(f"{prompts}: no .txt prompt files")
    return [Item(i, paths.read_text(paths.join(prompts, n)).strip(), n[:-len(".txt")])
            for i, n in enumerate(names)]
  try:
    meta = json.loads(paths.read_text(prompts))
    return [Item(i, m["prompt"], m["prompt_file_name"]) for i, m in enumerate(meta)]
  except (ValueError, KeyError, TypeError):
    raise ValueError(f"{prompts}: expected a folder of .txt prompts or a JSON list of "
                     "{\"prompt\", \"prompt_file_name\"}") from None


def shard(items: Sequence[Item], num_shards: int, shard_index: int) -> list[Item]:
  """The shard_index-th of num_shards contiguous chunks (np.array_split sizes)."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard index {shard_index} is not in [0, {num_shards})")
  bounds = np.array_split(np.arange(len(items)), num_shards)[shard_index]
  return [items[i] for i in bounds]


# ----------------------------------------------------------------------------- writing

def _write_png(path: str, image: np.ndarray) -> None:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  if paths.is_uri(path):  # an object appears whole or not at all
    paths.write_bytes(path, buf.getvalue())
  else:
    paths.write_bytes(path + ".tmp", buf.getvalue())
    paths.rename(path + ".tmp", path)


def grid(images: Sequence[np.ndarray], rows: int = 2, cols: int = 2) -> np.ndarray:
  """uint8 (H, W, 3) images -> one (rows*H, cols*W, 3) grid, row by row, white gaps."""
  h, w = images[0].shape[:2]
  out = np.full((rows * h, cols * w, 3), 255, np.uint8)
  for k, im in enumerate(images):
    r, c = divmod(k, cols)
    out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
  return out


def geneval_files(out: str, item: Item, samples: int) -> list[str]:
  return [paths.join(out, item.name, "samples", f"{k:04d}.png") for k in range(samples)]


def dpg_file(out: str, item: Item) -> str:
  return paths.join(out, f"{item.name}.png")


def sample_images(pipe: Pipeline, items: Sequence[Item], sampling: FlowSampling, *, samples: int,
                  seed: int, batch_size: int, done: Callable[[Item], bool],
                  write: Callable[[Item, np.ndarray], None], show_progress: bool = True) -> int:
  """Generates `samples` images per item not `done` and hands them to `write`.

  Batches hold up to `batch_size` images (several items' samples when it is a
  multiple of `samples`); the last batch is padded so every batch compiles once.
  Returns the number of items written.
  """
  todo = [it for it in items if not done(it)]
  if len(todo) < len(items):
    log.info("resuming: %d of %d items already written", len(items) - len(todo), len(items))
  ids = pipe.prompt_ids([it.prompt for it in todo], truncate=True)
  jobs = [(it, k, r) for it, r in zip(todo, ids) for k in range(samples)]
  key = jax.random.PRNGKey(seed)
  shape = pipe.latent_shape()
  pending: dict = {}
  written = 0
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=len(todo), desc="prompts", unit="prompt", disable=not show_progress)
  for start in range(0, len(jobs), batch_size):
    batch = jobs[start:start + batch_size]
    n = len(batch)
    batch = batch + [batch[-1]] * (batch_size - n)
    noise = jnp.stack([transport.initial_noise(jax.random.fold_in(key, it.index * samples + k),
                                               shape) for it, k, _ in batch])
    latents = pipe.sample_latents([r for _, _, r in batch], noise, sampling)
    images = pipe.decode(np.asarray(latents)[:n])
    for (it, k, _), im in zip(batch[:n], images):
      pending.setdefault(it.index, {})[k] = im
      if len(pending[it.index]) == samples:
        got = pending.pop(it.index)
        write(it, np.stack([got[j] for j in range(samples)]))
        written += 1
        bar.update(1)
  bar.close()
  return written


def write_geneval(pipe: Pipeline, items: Sequence[Item], out: str, *,
                  sampling: FlowSampling = GENEVAL_SAMPLING, samples: int = 4, seed: int = 0,
                  batch_size: int = 4, show_progress: bool = True) -> int:
  """GenEval's folder layout (module docstring) for `items` (one shard)."""
  def done(it):
    return all(paths.exists(f) for f in geneval_files(out, it, samples)) and paths.exists(
        paths.join(out, it.name, "metadata.jsonl"))

  def write(it, images):
    paths.write_text(paths.join(out, it.name, "metadata.jsonl"), it.metadata + "\n")
    for f, im in zip(geneval_files(out, it, samples), images):
      _write_png(f, im)

  return sample_images(pipe, items, sampling, samples=samples, seed=seed, batch_size=batch_size,
                       done=done, write=write, show_progress=show_progress)


def write_dpg(pipe: Pipeline, items: Sequence[Item], out: str, *,
              sampling: FlowSampling = DPG_SAMPLING, seed: int = 0, batch_size: int = 4,
              show_progress: bool = True) -> int:
  """DPG-Bench's layout: one 2 x 2 grid PNG per prompt file."""
  return sample_images(pipe, items, sampling, samples=4, seed=seed, batch_size=batch_size,
                       done=lambda it: paths.exists(dpg_file(out, it)),
                       write=lambda it, ims: _write_png(dpg_file(out, it), grid(ims)),
                       show_progress=show_progress)
