"""Encode a dataset's media once with the VAE and store latents in ArrayRecord shards.

Why: the VAE encoder costs about as much as a small LLM forward per image and
its weights are frozen; encoding once (maxdiffusion does the same for Wan)
takes it out of the train step. Training then reads the shards with
`sources.array_record_source` and the same tasks: a record with `latents`
gives the row `latents` instead of `pixel_values`.

Each output record is the input record (caption, conversation, story, paths)
plus the encoder's arrays, one entry per image of the record: `latents`
(n, C, h, w) and, when the encoder returns them, more arrays such as
`latents_logvar` so training can keep drawing posterior samples (spec 6.6).

Work is split into `num_shards` contiguous index ranges; process p of P writes
shards p, p+P, ... A shard file appears only when complete (written under a
temporary name, then renamed), so a rerun skips finished shards and redoes an
interrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable

import grain
import numpy as np

from showo2_jax import paths
from showo2_jax.data import record_io
from showo2_jax.data import tasks as tasks_lib

_log = logging.getLogger(__name__)
_DROP_KEYS = ("image_bytes",)  # media already encoded; not worth storing twice


@dataclasses.dataclass
class PrecomputeResult:
  shards_written: list[str]
  shards_skipped: list[str]   # already complete from an earlier run
  num_records: int            # records written by this call
  num_skipped: int            # records dropped (bad or filtered media)


def shard_path(out_dir: str, index: int, count: int) -> str:
  return paths.join(out_dir, f"latents-{index:05d}-of-{count:05d}.array_record")


def with_pixels(records: grain.MapDataset, load_pixels: Callable[[dict], np.ndarray]) -> grain.MapDataset:
  """Records plus `pixel_values` from a pixel loader (tasks.pixel_loader), or Skipped."""
  return records.map(functools.partial(_add_pixels, load_pixels=load_pixels))


def _add_pixels(record, load_pixels):
  try:
    return {**record, "pixel_values": load_pixels(record)}
  except tasks_lib.DATA_ERRORS as e:
    return tasks_lib.as_skipped(e)


def precompute_latents(dataset: grain.MapDataset, encode_fn: Callable, out_dir: str, *,
                       batch_size: int = 16, num_shards: int | None = None,
                       records_per_shard: int = 2048, process_index: int | None = None,
                       process_count: int | None = None, read_threads: int = 4,
                       progress: bool = True) -> PrecomputeResult:
  """Encodes every record's `pixel_values` with `encode_fn`, writing ArrayRecord shards.

  dataset: random-access records with `pixel_values` (n, 3, ...) (see
    `with_pixels`); `tasks.Skipped` elements are dropped and counted.
  encode_fn: pixels (k, 3, ...) float32 in [-1, 1] -> latents (k, C, ...), or a
    dict of such arrays (e.g. {"latents": mu, "latents_logvar": logvar}).
    Always called on exactly `batch_size` images (zero-padded), so a jitted
    encoder compiles once; any callable works, e.g. a stub in tests.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from showo2_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  process_index, process_count = pipeline.shard_options(process_index, process_count)
  total = len(dataset)
  num_shards = num_shards or max(1, -(-total // records_per_shard))
  paths.makedirs(out_dir)
  mine = range(process_index, num_shards, process_count)
  todo = [s for s in mine if not paths.exists(shard_path(out_dir, s, num_shards))]
  result = PrecomputeResult([], [shard_path(out_dir, s, num_shards) for s in mine if s not in todo],
                            0, 0)
  bounds = np.linspace(0, total, num_shards + 1).astype(int)
  bar = tqdm(total=int(sum(bounds[s + 1] - bounds[s] for s in todo)), disable=not progress,
             desc=f"precompute (process {process_index})", unit="rec")
  for s in todo:
    part = dataset[int(bounds[s]):int(bounds[s + 1])]
    records = part.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                     prefetch_buffer_size=4 * batch_size))
    path = shard_path(out_dir, s, num_shards)
    counter = _Counter(bar)
    n = record_io.write_array_record(path, _encoded(counter.count(records), encode_fn, batch_size))
    result.shards_written.append(path)
    result.num_records += n
    result.num_skipped += counter.skipped
  bar.close()
  _log.info("precompute: %d records in %d new shards, %d skipped, %d shards already done",
            result.num_records, len(result.shards_written), result.num_skipped,
            len(result.shards_skipped))
  return result


class _Counter:
  """Advances the progress bar and counts Skipped elements while passing records."""

  def __init__(self, bar):
    self.bar, self.skipped = bar, 0

  def count(self, records):
    for record in records:
      self.bar.update(1)
      if isinstance(record, tasks_lib.Skipped):
        self.skipped += 1
      else:
        yield record


def _encoded(records, encode_fn, batch_size):
  """Groups records into batches of <= batch_size images, encodes, splits back."""
  group, size = [], 0
  for record in records:
    n = len(record["pixel_values"])
    if group and size + n > batch_size:
      yield from _encode_group(group, encode_fn, batch_size)
      group, size = [], 0
    group.append(record)
    size += n
  if group:
    yield from _encode_group(group, encode_fn, batch_size)


def _encode_group(group, encode_fn, batch_size):
  pixels = np.concatenate([r["pixel_values"] for r in group]).astype(np.float32)
  out = _encode_padded(pixels, encode_fn, batch_size)
  start = 0
  for record in group:
    n = len(record["pixel_values"])
    kept = {k: v for k, v in record.items() if k != "pixel_values" and k not in _DROP_KEYS}
    yield {**kept, **{k: v[start:start + n] for k, v in out.items()}}
    start += n


def _encode_padded(pixels, encode_fn, batch_size):
  """encode_fn on chunks of exactly batch_size images (zero-padded): one jit shape."""
  n = len(pixels)
  padded = np.zeros((-(-n // batch_size) * batch_size,) + pixels.shape[1:], np.float32)
  padded[:n] = pixels
  chunks = []
  for i in range(0, len(padded), batch_size):
    out = encode_fn(padded[i:i + batch_size])
    out = out if isinstance(out, dict) else {"latents": out}
    chunks.append({k: np.asarray(v, np.float32) for k, v in out.items()})
  if "latents" not in chunks[0]:
    raise ValueError("encode_fn must return latents (an array or a dict with 'latents'), "
                     f"got {sorted(chunks[0])}")
  out = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}
  for k, v in out.items():
    if not tasks_lib.is_visual_key(k) or len(v) != n:
      raise ValueError(f"encode_fn output {k!r}: expected a 'latents*' array with "
                       f"{batch_size} rows per call, got {v.shape}")
  return out
