"""From a config's `data` block to global, sharded batches for the train step.

Each process reads only the rows its devices hold (a contiguous slice of the
global batch, derived from the batch sharding), and `to_global` assembles the
process-local numpy batches into one global jax.Array per field. A batch is a
dict of numpy arrays (`text_tokens`, `text_labels`, `modality_positions`,
`image_masks`, `latents`, `is_und`, ...), the one boundary between host-side data
work and the jitted step.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from showo2_jax.train import synthetic

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def process_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """[start, stop) of the global batch rows that this process's devices hold."""
  sharding = batch_sharding(mesh, 1)
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  starts = sorted({(s[0].start or 0, s[0].stop or global_batch) for s in index_map.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  if covered != hi - lo:
    raise ValueError(f"this process's batch rows {starts} are not contiguous; "
                     f"use a mesh whose batch axes follow process order")
  return lo, hi


def to_global(local: Mapping[str, np.ndarray], mesh: Mesh, global_batch: int) -> dict:
  """Process-local numpy rows -> global jax.Arrays sharded on the batch axis."""
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    shape = (global_batch,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, shape)
  return out


def check_global_batch(global_batch: int, mesh: Mesh, grad_accum_steps: int) -> int:
  """Rows per microbatch; it must split evenly over the batch-sharded devices."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % grad_accum_steps:
    raise ValueError(f"global_batch_size {global_batch} is not a multiple of "
                     f"grad_accum_steps {grad_accum_steps}")
  micro = global_batch // grad_accum_steps
  if micro % shards:
    raise ValueError(f"a microbatch of {micro} rows does not split over {shards} data*fsdp shards")
  return micro


def make_iterator(config, mesh: Mesh) -> Iterator:
  """The training iterator of this process (get_state/set_state for checkpoints)."""
  d = config.data
  start, stop = process_rows(mesh, config.train.global_batch_size)
  if d.source == "synthetic":
    return synthetic.SyntheticIterator(synthetic.SyntheticSource(synthetic_spec(config)), start, stop)
  if d.source == "grain":
    # The real pipeline (showo2_jax.data) builds this process's loader; imported
    # lazily so that synthetic runs do not need its dependencies.
    from showo2_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.make_train_iterator(config, row_start=start, row_stop=stop)
  raise ValueError(f"unknown data.source '{d.source}'; choose synthetic or grain")


def synthetic_spec(config) -> synthetic.SyntheticSpec:
  m, d = config.model, config.data
  p = m.patch_size
  n = m.image_latent_height * m.image_latent_width
  return synthetic.SyntheticSpec(
      seq_len=config.max_seq_len,
      latent_shape=(m.latent_channels, m.image_latent_height * p, m.image_latent_width * p),
      num_visual_tokens=n + 1, vocab_size=m.llm.vocab_size, num_classes=d.num_classes,
      caption_len=d.caption_len, t2i_rows=d.t2i_rows, mmu_rows=d.mmu_rows,
      interleaved_rows=d.interleaved_rows, max_images=d.max_images, seed=config.seed)
