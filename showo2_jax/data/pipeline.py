"""Training input pipelines: per-stream Grain graphs, mixed into one batch per step.

    records -> shuffle (per epoch, global) -> repeat -> task (random_map)
      -> retry skipped rows -> this host's rows of step n -> batch     (per stream)
    [stream batches of step n] -> concatenate rows -> flatten slots    (element n)
      -> to_iter_dataset (threads) -> mp_prefetch (worker processes) -> positions, skip totals

Each step takes `batch_size` rows from every stream, in order, and concatenates
them: with streams (t2i: 6, mmu: 2) every batch is 6 generation rows then 2
understanding rows, like the original's `concat_max_size_cycle`. Streams repeat
forever (reshuffled every epoch), so the mix never ends.

Positions are global, so resume is elastic. Every stream is one endless,
globally shuffled sequence of samples; step n of host h of P reads rows
[p + h*b, p + (h+1)*b) of it, p = start + n*b*P (b: the stream's rows per host).
The state is just each stream's global position p (and the skip totals): a
restart with another number of processes, data workers or mesh continues at
the same sample, with none repeated or skipped. A skipped sample (bad file,
filtered image) is replaced by a sample of the same epoch drawn from
(seed, position, attempt), so the replacement too is a function of the
position only. Everything random is a function of the seed and the position,
not of worker timing or host count.

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
import math
import sys
from typing import Mapping, Sequence

import grain
import numpy as np

from showo2_jax.data import sequences
from showo2_jax.data import sources
from showo2_jax.data import tasks as tasks_lib

_log = logging.getLogger(__name__)
SKIP_KEYS = ("num_bad", "num_filtered")


@dataclasses.dataclass
class Stream:
  """One kind of rows in every batch: `batch_size` rows (per host) of `task` over `records`."""
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


class StreamRows:
  """Row j of one stream's endless global sequence (random access, picklable).

  `rows[j]` is sample j of the shuffled, repeated records through the task; a
  `tasks.Skipped` row is replaced by a random sample of the same epoch (seeded by
  (seed, j, attempt)), and the row carries how many samples it skipped as
  `num_bad`/`num_filtered`. After `max_consecutive` skips for one row it raises,
  quoting the last reason, instead of spinning on a stream with no usable sample.
  """

  def __init__(self, stream: Stream, seed: int, max_consecutive: int = 1000):
    self.name, self.seed, self.max_consecutive = stream.name, int(seed), int(max_consecutive)
    self.epoch_len = len(stream.records)
    if self.epoch_len == 0:
      raise sources.EmptyDatasetError(f"stream {stream.name!r} has no records")
    self._rows = stream.records.seed(self.seed).shuffle().repeat().random_map(stream.task)

  def __getitem__(self, j: int) -> dict:
    counts = dict.fromkeys(SKIP_KEYS, 0)
    k, attempt = j, 0
    while True:
      row = self._rows[k]
      if not isinstance(row, tasks_lib.Skipped):
        return {**row, **{key: np.int32(v) for key, v in counts.items()}}
      counts[f"num_{row.kind}"] += 1
      attempt += 1
      if attempt >= self.max_consecutive:
        raise sources.EmptyDatasetError(
            f"stream {self.name!r}: {self.max_consecutive} samples in a row were skipped "
            f"(last: {row.kind}: {row.reason}); check the data and the filters (min_res)")
      u = int(np.random.default_rng([self.seed, j, attempt]).integers(self.epoch_len))
      k = (j // self.epoch_len) * self.epoch_len + u

  def host_batch(self, position: int, host: int, rows: int) -> dict:
    """Rows [position + host*rows, position + (host+1)*rows), stacked."""
    first = position + host * rows
    return sequences.stack_rows([self[j] for j in range(first, first + rows)])


class StepBatches(grain.MapDataset):
  """Element n: this host's mixed batch of the n-th step after `start` (a MapDataset,
  so threads and worker processes split whole steps, whatever their number)."""

  def __init__(self, rows: Sequence[StreamRows], batch_sizes: Sequence[int], start: Sequence[int],
               shard_index: int, shard_count: int):
    super().__init__()
    self._rows, self._sizes, self._start = list(rows), list(batch_sizes), list(start)
    self._host, self._hosts = int(shard_index), int(shard_count)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return concat_batches([
        r.host_batch(p + index * b * self._hosts, self._host, b)
        for r, b, p in zip(self._rows, self._sizes, self._start)])

  def __str__(self) -> str:
    return f"StepBatches(streams={[r.name for r in self._rows]}, host={self._host}/{self._hosts})"


class MixedBatches(grain.IterDataset):
  """One batch per step with every stream's rows concatenated, slots flattened.

  Iterating it starts at position 0; `make_loader` gives the resumable iterator.
  """

  def __init__(self, streams: Sequence[Stream], *, seed: int, shard_index: int = 0,
               shard_count: int = 1, read_threads: int = 2, prefetch_buffer: int = 16,
               max_consecutive_skips: int = 1000):
    super().__init__()
    if not streams:
      raise ValueError("no data streams configured")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"host {shard_index} of {shard_count} does not exist")
    self.names = [s.name for s in streams]
    self.batch_sizes = [int(s.batch_size) for s in streams]
    self.shard_index, self.shard_count = int(shard_index), int(shard_count)
    self._rows = [StreamRows(s, seed + 1000 * i, max_consecutive_skips) for i, s in enumerate(streams)]
    for r, b in zip(self._rows, self.batch_sizes):
      if r.epoch_len < b * shard_count:
        _log.warning("stream %r has %d records for a global batch of %d rows",
                     r.name, r.epoch_len, b * shard_count)
    rows_per_step = max(sum(self.batch_sizes), 1)
    # `prefetch_buffer` counts rows; threads read whole steps.
    threads = max(int(read_threads), 1) * len(streams)
    self._read = grain.ReadOptions(
        num_threads=threads,
        prefetch_buffer_size=max(math.ceil(prefetch_buffer / rows_per_step), threads))

  def global_batch_sizes(self) -> dict[str, int]:
    """Rows each stream gives per step over all hosts (what a position advances by)."""
    return {n: b * self.shard_count for n, b in zip(self.names, self.batch_sizes)}

  def from_positions(self, positions: Mapping[str, int]) -> grain.IterDataset:
    """The batches of the steps from `positions` (global row index per stream) on."""
    start = [int(positions.get(n, 0)) for n in self.names]
    steps = StepBatches(self._rows, self.batch_sizes, start, self.shard_index, self.shard_count)
    return steps.to_iter_dataset(self._read)

  def __iter__(self):
    return self.from_positions({}).__iter__()

  def __str__(self) -> str:
    return f"MixedBatches({self.names}, host {self.shard_index} of {self.shard_count})"


def mixed_batches(streams: Sequence[Stream], *, seed: int, shard_index: int = 0, shard_count: int = 1,
                  read_threads: int = 2, prefetch_buffer: int = 16,
                  max_consecutive_skips: int = 1000) -> MixedBatches:
  """One batch per step with every stream's rows concatenated, slots flattened
  (host `shard_index` of `shard_count` reads its rows of every stream)."""
  return MixedBatches(streams, seed=seed, shard_index=shard_index, shard_count=shard_count,
                      read_threads=read_threads, prefetch_buffer=prefetch_buffer,
                      max_consecutive_skips=max_consecutive_skips)


def concat_batches(batches: Sequence[dict]) -> dict:
  """Rows of all streams, in stream order; slot axes folded into the batch axis.

  Streams must agree on L and the visual input kind (pixels or latents) and
  shape, as the original's concatenation required. Rows with fewer image slots
  than the widest stream (t2i: M = 1 beside interleaved rows: M = 4) get empty
  slots, position (0, 0) and zero images, as an interleaved row with fewer images
  has: the step gives them no tokens and no loss.

  A stream stored as the posterior mean (`precompute-latents --deterministic`: no
  `latents_logvar`) beside one sampled every step gets `latents_logvar` =
  `MEAN_LOGVAR` (-30, the floor of the original's clamp, spec 6.6: std 3.1e-7 on
  normalised latents of std ~1), so its rows stay its stored mean to fp32 precision.
  """
  batches = [_with_mean_logvar(b) if "latents_logvar" not in b and "latents" in b
             and any("latents_logvar" in o for o in batches) else b for b in batches]
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


# logvar of a posterior-mean stream mixed with sampled ones (concat_batches).
MEAN_LOGVAR = -30.0


def _with_mean_logvar(batch: dict) -> dict:
  return dict(batch, latents_logvar=np.full(batch["latents"].shape, MEAN_LOGVAR, np.float32))


def _pad_slots(v: np.ndarray, m: int) -> np.ndarray:
  """(B, M', ...) -> (B, m, ...) with zero slots appended."""
  if v.shape[1] == m:
    return v
  pad = [(0, 0)] * v.ndim
  pad[1] = (0, m - v.shape[1])
  return np.pad(v, pad)


def make_loader(dataset: MixedBatches, *, num_workers: int = 0,
                worker_buffer_size: int = 2) -> "Loader":
  """The resumable loader: worker processes (0 = in this process), positions, skip totals.

  Its iterator has `get_state`/`set_state` (`{"positions": {stream: global row},
  "skip_counts": {...}}`, JSON) and a `skip_counts` dict (num_bad, num_filtered
  samples replaced so far on this host) for the training metrics. A state restores
  under any number of workers or hosts.
  """
  return Loader(dataset, num_workers=num_workers, worker_buffer_size=worker_buffer_size)


class DataStateError(ValueError):
  """A data state this loader cannot continue from (an older, per-host format)."""


class Loader(grain.IterDataset):
  """See `make_loader`."""

  def __init__(self, mixed: MixedBatches, *, num_workers: int = 0, worker_buffer_size: int = 2):
    super().__init__()
    self.mixed, self.num_workers, self.worker_buffer_size = mixed, int(num_workers), int(worker_buffer_size)

  def __iter__(self) -> "LoaderIterator":
    return LoaderIterator(self)

  def __str__(self) -> str:
    return f"Loader({self.mixed}, num_workers={self.num_workers})"


class LoaderIterator(grain.DatasetIterator):
  """Batches from global positions; rebuilds its Grain graph on `set_state`."""

  def __init__(self, loader: Loader):
    super().__init__()
    self._loader = loader
    self._step_rows = loader.mixed.global_batch_sizes()
    self.positions = dict.fromkeys(self._step_rows, 0)
    self.skip_counts = dict.fromkeys(SKIP_KEYS, 0)
    self._it = None

  def _iterator(self):
    if self._it is None:
      ds = self._loader.mixed.from_positions(self.positions)
      if self._loader.num_workers > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self._loader.num_workers,
            per_worker_buffer_size=self._loader.worker_buffer_size))
      self._it = ds.__iter__()
    return self._it

  def __next__(self) -> dict:
    batch = next(self._iterator())
    for name, rows in self._step_rows.items():
      self.positions[name] += rows
    for k in SKIP_KEYS:
      self.skip_counts[k] += int(np.sum(batch.pop(k)))
    return batch

  def get_state(self) -> dict:
    return {"positions": dict(self.positions), "skip_counts": dict(self.skip_counts)}

  def set_state(self, state) -> None:
    if not isinstance(state, Mapping) or "positions" not in state:
      raise DataStateError(
          "the saved data state is a per-host iterator state of an older version, not global "
          "positions; resume with the version that wrote it, or start a new --workdir with "
          "--config.init.from_checkpoint=<that step> (the data starts over)")
    self.close()
    self.positions = {n: int(state["positions"].get(n, 0)) for n in self._step_rows}
    self.skip_counts = {k: int(state.get("skip_counts", {}).get(k, 0)) for k in SKIP_KEYS}

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def _ensure_absl_flags_parsed():
  """Grain's worker processes read absl flags; our CLIs use argparse, not absl.app."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


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
