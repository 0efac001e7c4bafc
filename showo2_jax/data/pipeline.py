"""Training input pipelines: per-stream Grain graphs, mixed into one batch per step.

    records -> shard by process -> shuffle (per epoch) -> repeat -> task (random_map)
      -> to_iter_dataset (threads) -> drop skipped rows (count them) -> batch
    [stream batches] -> zip -> concatenate rows (concat_max_size_cycle) -> flatten slots
      -> mp_prefetch (worker processes) -> skip totals

Each step takes `batch_size` rows from every stream, in order, and concatenates
them: with streams (t2i: 6, mmu: 2) every batch is 6 generation rows then 2
understanding rows, like the original's `concat_max_size_cycle`. Streams repeat
forever (reshuffled every epoch), so the mix never ends.

The whole graph is a `grain.IterDataset`; its iterator's get_state/set_state
checkpoints the position (and the skip totals) exactly: after a restore the
next batch is the one that would have come. Everything random is a function
of the seed and the element index, not of worker timing.

Batch dict (the contract with training; see docs/data.md), B rows, M slots:
  text_tokens (B, L) int32, text_labels (B, L) int32, image_masks (B, L) int32,
  modality_positions (B, M, 2) int32, is_und (B,) bool, and
  pixel_values (B*M, 3, R, R) float32 in [-1, 1] (video: (B*M, 3, F, R, R)) or
  latents (B*M, C, h, w) (+ latents_logvar if stored) when the records carry
  precomputed latents; slot order k = i*M + j.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import grain
import numpy as np

from showo2_jax.data import sequences
from showo2_jax.data import sources
from showo2_jax.data import tasks as tasks_lib

_log = logging.getLogger(__name__)
SKIP_KEYS = ("num_bad", "num_filtered")


@dataclasses.dataclass
class Stream:
  """One kind of rows in every batch: `batch_size` rows of `task` over `records`."""
  name: str
  records: grain.MapDataset
  task: tasks_lib.Task
  batch_size: int


def shard_options(process_index: int | None = None, process_count: int | None = None):
  """(index, count) of this host's shard; defaults to the JAX process."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  return process_index, process_count


def stream_batches(stream: Stream, *, seed: int, shard_index: int = 0, shard_count: int = 1,
                   read_threads: int = 2, prefetch_buffer: int = 16,
                   max_consecutive_skips: int = 1000) -> grain.IterDataset:
  """Endless batches (a dict of stacked rows) of one stream on one host.

  Each host reads every `shard_count`-th record from `shard_index`, so hosts
  never read the same sample; shuffling happens within the shard.
  """
  records = stream.records[shard_index::shard_count] if shard_count > 1 else stream.records
  if len(records) == 0:  # pylint: disable=g-explicit-length-test
    raise sources.EmptyDatasetError(
        f"stream {stream.name!r}: no records for host {shard_index} of {shard_count}")
  if len(records) < stream.batch_size:
    _log.warning("stream %r has %d records on this host for a batch of %d",
                 stream.name, len(records), stream.batch_size)
  rows = records.seed(seed).shuffle().repeat().random_map(stream.task)
  rows = rows.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=prefetch_buffer))
  rows = DropSkipped(rows, stream.name, max_consecutive_skips)
  return rows.batch(stream.batch_size, drop_remainder=True, batch_fn=sequences.stack_rows)


def mixed_batches(streams: Sequence[Stream], *, seed: int, shard_index: int = 0, shard_count: int = 1,
                  read_threads: int = 2, prefetch_buffer: int = 16,
                  max_consecutive_skips: int = 1000) -> grain.IterDataset:
  """One batch per step with every stream's rows concatenated, slots flattened."""
  if not streams:
    raise ValueError("no data streams configured")
  per_stream = [stream_batches(s, seed=seed + 1000 * i, shard_index=shard_index,
                               shard_count=shard_count, read_threads=read_threads,
                               prefetch_buffer=prefetch_buffer,
                               max_consecutive_skips=max_consecutive_skips)
                for i, s in enumerate(streams)]
  if len(per_stream) == 1:
    return per_stream[0].map(_as_tuple).map(concat_batches)
  return grain.experimental.ZipIterDataset(per_stream).map(concat_batches)


def _as_tuple(batch):
  return (batch,)


def concat_batches(batches: Sequence[dict]) -> dict:
  """Rows of all streams, in stream order; slot axes folded into the batch axis.

  Streams must agree on L and the visual input kind (pixels or latents) and
  shape, as the original's concatenation required. Rows with fewer image slots
  than the widest stream (t2i: M = 1 beside interleaved rows: M = 4) get empty
  slots, position (0, 0) and zero images, as an interleaved row with fewer images
  has: the step gives them no tokens and no loss.
  """
  keys = set(batches[0])
  for b in batches[1:]:
    if set(b) != keys:
      raise ValueError(f"streams produce different fields: {sorted(keys)} vs {sorted(b)}")
  if "modality_positions" in keys:
    m = max(b["modality_positions"].shape[1] for b in batches)
    batches = [{k: _pad_slots(v, m) if k == "modality_positions" or tasks_lib.is_visual_key(k) else v
                for k, v in b.items()} for b in batches]
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for k in out:
    if tasks_lib.is_visual_key(k):
      out[k] = out[k].reshape((-1,) + out[k].shape[2:])
  return out


def _pad_slots(v: np.ndarray, m: int) -> np.ndarray:
  """(B, M', ...) -> (B, m, ...) with zero slots appended."""
  if v.shape[1] == m:
    return v
  pad = [(0, 0)] * v.ndim
  pad[1] = (0, m - v.shape[1])
  return np.pad(v, pad)


def make_loader(dataset: grain.IterDataset, *, num_workers: int = 0,
                worker_buffer_size: int = 2) -> grain.IterDataset:
  """Worker processes (0 = in this process), then per-batch skip totals.

  The result's iterator has `get_state`/`set_state` and a `skip_counts` dict
  (num_bad, num_filtered rows so far on this host) for the training metrics.
  """
  if num_workers > 0:
    _ensure_absl_flags_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
  return SkipTotals(dataset)


def _ensure_absl_flags_parsed():
  """Grain's worker processes read absl flags; our CLIs use argparse, not absl.app."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ----------------------------------------------------------------------------- skip accounting

class DropSkipped(grain.IterDataset):
  """Drops `tasks.Skipped` rows; the next kept row carries how many were dropped.

  A stream whose every sample is skipped would otherwise loop forever: after
  `max_consecutive` skips in a row it raises, quoting the last reason.
  """

  def __init__(self, parent, name: str = "", max_consecutive: int = 1000):
    super().__init__(parent)
    self._name, self._max_consecutive = name, max_consecutive

  def __iter__(self):
    return _DropSkippedIterator(self._parent.__iter__(), self._name, self._max_consecutive)


class _DropSkippedIterator(grain.DatasetIterator):

  def __init__(self, parent, name, max_consecutive):
    super().__init__(parent)
    self._name, self._max_consecutive = name, max_consecutive

  def __next__(self):
    counts = dict.fromkeys(SKIP_KEYS, 0)
    while True:
      row = next(self._parent)
      if not isinstance(row, tasks_lib.Skipped):
        break
      counts[f"num_{row.kind}"] += 1
      if sum(counts.values()) >= self._max_consecutive:
        raise sources.EmptyDatasetError(
            f"stream {self._name!r}: {self._max_consecutive} samples in a row were skipped "
            f"(last: {row.kind}: {row.reason}); check the data and the filters (min_res)")
    return {**row, **{k: np.int32(v) for k, v in counts.items()}}

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipTotals(grain.IterDataset):
  """Moves the per-row skip counts out of the batch into running totals."""

  def __iter__(self):
    return _SkipTotalsIterator(self._parent.__iter__())


class _SkipTotalsIterator(grain.DatasetIterator):

  def __init__(self, parent):
    super().__init__(parent)
    self.skip_counts = dict.fromkeys(SKIP_KEYS, 0)

  def __next__(self):
    batch = next(self._parent)
    for k in SKIP_KEYS:
      self.skip_counts[k] += int(np.sum(batch.pop(k)))
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "skip_counts": dict(self.skip_counts)}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self.skip_counts = dict(state["skip_counts"])


# ----------------------------------------------------------------------------- device arrays

def global_batch(batch: dict, mesh, batch_axes: Sequence[str] = ("data", "fsdp")) -> dict:
  """This host's rows -> global jax.Arrays sharded over `batch_axes` of `mesh`.

  Every host passes its own local batch (same shapes on every host); the
  global batch is their concatenation in process order. Axes missing from the
  mesh are ignored.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  sharding = NamedSharding(mesh, PartitionSpec(axes or None))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
