"""From a config's `data` block to global, sharded batches for the train step.

Each process reads only the rows its devices hold (a contiguous slice of the
global batch, derived from the batch sharding), and `to_global` assembles the
process-local numpy batches into one global jax.Array per field. A batch is a
dict of numpy arrays (`text_tokens`, `text_labels`, `modality_positions`,
`image_masks`, `latents`, `is_und`, ...), the one boundary between host-side data
work and the jitted step. Images come as `latents` (precomputed, the fast path)
or as `pixel_values` that the step encodes with the frozen VAE (vae_encoder.py).
"""
from __future__ import annotations

import logging
from typing import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from showo2_jax.sharding import BATCH_AXES
from showo2_jax.train import synthetic, vae_encoder

log = logging.getLogger(__name__)


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


VISUAL_KEYS = ("latents", "latents_logvar", "pixel_values")


def slots_by_row(local: Mapping[str, np.ndarray]) -> dict:
  """The pipeline flattens slots into the batch axis ((B*M, ...), slot k = i*M + j);
  the step wants (B, M, ...) so that a row keeps its images when the batch is
  split over devices or microbatches. A free host-side reshape."""
  if "modality_positions" not in local:   # not a sequence batch (e.g. distillation)
    return dict(local)
  b = np.shape(local["text_tokens"])[0]
  m = np.shape(local["modality_positions"])[1]
  out = dict(local)
  for k in VISUAL_KEYS:
    if k in out:
      v = np.asarray(out[k])
      if v.shape[0] != b * m:
        raise ValueError(f"batch field {k} has {v.shape[0]} images for {b} rows x {m} slots")
      out[k] = v.reshape((b, m) + v.shape[1:])
  return out


def step_fields(local: Mapping[str, np.ndarray]) -> dict:
  """The fields the step reads: pixels are dropped when latents are there too
  (precomputed latents win; no point shipping images to the devices)."""
  out = dict(local)
  if "latents" in out:
    out.pop("pixel_values", None)
  return out


def to_global(local: Mapping[str, np.ndarray], mesh: Mesh, global_batch: int) -> dict:
  """Process-local numpy rows -> global jax.Arrays sharded on the batch axis."""
  out = {}
  for k, v in slots_by_row(step_fields(local)).items():
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
    fit = -(-micro // shards) * shards * grad_accum_steps
    raise ValueError(f"a microbatch of {micro} rows does not split over {shards} data*fsdp shards: "
                     f"pass a global batch that does, e.g. --config.train.global_batch_size={fit}")
  return micro


def layout(config) -> dict:
  """What the data position was saved under (with every checkpoint). Both iterators
  keep a global position (`elastic`), which any process and worker count continues."""
  d = config.data
  return {"process_count": jax.process_count(),
          "num_workers": int(d.get("num_workers", 0)) if "streams" in d else 0,
          "elastic": True}


def make_iterator(config, mesh: Mesh) -> Iterator:
  """This process's training iterator (with get_state/set_state for checkpoints).

  `config.data` is either our synthetic block (`source='synthetic'`) or a real
  pipeline config from configs/data.py (it has `streams`), read with the
  tokenizer at `config.tokenizer_path`.
  """
  d = config.data
  start, stop = process_rows(mesh, config.train.global_batch_size)
  if "streams" in d:
    return _pipeline_iterator(config, stop - start)
  if d.get("source") == "synthetic":
    return synthetic.SyntheticIterator(synthetic.SyntheticSource(synthetic_spec(config)), start, stop)
  raise ValueError("config.data must be a synthetic block (source='synthetic') or a pipeline "
                   "config from configs/data.py (with streams)")


def _pipeline_iterator(config, local_rows: int):
  # Imported here: synthetic runs need neither tokenizers nor media decoders.
  from showo2_jax.data import build, tokenizer  # pylint: disable=import-outside-toplevel
  d = scaled_streams(config.data, local_rows, config.train.global_batch_size)
  video_frames(config)   # clips and images in one data block: a one-line error now, not at concat
  if not config.get("tokenizer_path"):
    raise ValueError("config.tokenizer_path (the Qwen2.5-Instruct tokenizer dir) is required")
  tok, special = tokenizer.load_tokenizer(config.tokenizer_path)
  stride, patch = visual_grid(config)
  loader = build.pipeline_from_config(
      d, tok, special, resolution=config.resolution, max_seq_len=config.max_seq_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      vae_stride=stride, patch_size=patch)
  return iter(loader)


def visual_grid(config) -> tuple[int, int]:
  """(VAE stride, patch size) the pipeline lays visual blocks out with.

  The stride is the run's VAE's (`config.vae`; Wan2.1's 8 when it is empty), the
  patch size the model's. Raises ValueError when `config.resolution` does not
  give the model's patch grid (image_latent_height x image_latent_width) through
  them: the blocks would hold fewer or more slots than the model fills.
  """
  m = config.get("model")
  patch = int(m.get("patch_size", 2)) if m is not None else 2
  stride = vae_encoder.vae_config(config).spatial_factor if "z_dim" in config.get("vae", {}) else 8
  if m is not None and "image_latent_height" in m:
    r = int(config.resolution)
    want = (int(m.image_latent_height), int(m.image_latent_width))
    got = r // stride // patch
    if (got, got) != want:
      raise ValueError(f"config.resolution {r} gives a {got}x{got} patch grid (VAE stride "
                       f"{stride}, patch {patch}) but the model's is {want[0]}x{want[1]} "
                       "(model.image_latent_height/width)")
  return stride, patch


def scaled_streams(d, local_rows: int, global_batch: int):
  """`d` with every stream's (per-host) batch_size scaled so they sum to `local_rows`.

  The streams' batch sizes are per host; a run restarted on another number of hosts
  with the same global batch needs them scaled by old/new hosts, which keeps every
  stream's global rows per step (the mix) and so its global sample position. Raises
  ValueError if they do not scale to whole rows.
  """
  sizes = {n: int(d.streams[n].batch_size) for n in d.stream_order}
  per_host = sum(sizes.values())
  if per_host == local_rows:
    return d
  scaled = {n: b * local_rows / per_host for n, b in sizes.items()}
  if per_host == 0 or any(v != int(v) for v in scaled.values()):
    flags = " ".join(f"--config.data.streams.{n}.batch_size=N" for n in sizes)
    raise ValueError(f"the data streams give {per_host} rows per host per step ({sizes}), but the "
                     f"global batch {global_batch} needs {local_rows} on this host; set {flags} "
                     f"to sum to {local_rows}")
  log.warning("data: stream batch sizes %s per host scaled to %s for %d rows on this host (the "
              "global batch %d over %d processes); every stream keeps its global rows per step",
              sizes, {n: int(v) for n, v in scaled.items()}, local_rows, global_batch,
              jax.process_count())
  d = d.copy_and_resolve_references()
  for n, v in scaled.items():
    d.streams[n].batch_size = int(v)
  return d


def synthetic_spec(config) -> synthetic.SyntheticSpec:
  m, d = config.model, config.data
  p = m.patch_size
  n = m.image_latent_height * m.image_latent_width
  return synthetic.SyntheticSpec(
      seq_len=config.max_seq_len,
      latent_shape=(m.latent_channels, m.image_latent_height * p, m.image_latent_width * p),
      num_visual_tokens=n + 1, vocab_size=m.llm.vocab_size, num_classes=d.num_classes,
      caption_len=d.caption_len, t2i_rows=d.t2i_rows, mmu_rows=d.mmu_rows,
      interleaved_rows=d.interleaved_rows,
      filled_rows=int(d.get("filled_rows", 0)), max_images=d.max_images, seed=config.seed,
      pixel_shape=pixel_shape(config) if d.get("pixels", False) else None)


def pixel_shape(config) -> tuple:
  """(3, R, R) of one image; R must give the model's latent grid through the VAE."""
  m, r = config.model, int(config.resolution)
  stride = vae_encoder.vae_config(config).spatial_factor
  want = (m.image_latent_height * m.patch_size, m.image_latent_width * m.patch_size)
  if (r // stride, r // stride) != want or r % stride:
    raise ValueError(f"resolution {r} gives {r // stride}x{r // stride} latents through the VAE "
                     f"(stride {stride}); the model's grid needs {want[0]}x{want[1]}")
  return (3, r, r)


def uses_pixels(config) -> bool:
  """Whether this run's batches carry pixels for the step's VAE: synthetic data
  says so (`data.pixels`); a pipeline's records are only known once read, so a
  set `vae_checkpoint` stands for pixels there (e.g. for `showo2-jax compile`)."""
  d = config.data
  if d.get("source") == "synthetic":
    return bool(d.get("pixels", False))
  return bool(config.get("vae_checkpoint", ""))


def slots_per_row(config) -> int:
  d = config.data
  if "streams" in d:
    slots = {"vist": lambda s: int(s.max_num_images),
             "llava_multi_image": lambda s: int(s.max_num_images), "edit": lambda s: 2}
    return max([slots.get(d.streams[n].task, lambda s: 1)(d.streams[n])
                for n in d.stream_order] or [1])
  return int(d.get("max_images", 1))


def video_frames(config) -> int:
  """Frames per clip of the run's video streams (`num_frames`, 1 + 4k), 0 without video.

  Raises ValueError when video streams share the data block with image streams or
  with other frame counts: their pixels (3, F, R, R) could not share a batch.
  """
  d = config.data
  if "streams" not in d:
    return 0
  from showo2_jax.data import data_file  # pylint: disable=import-outside-toplevel
  return data_file.video_frames(d.streams, d.stream_order)


def batch_shapes(config) -> dict:
  """The global batch as ShapeDtypeStructs (what the step is compiled for), images
  already (B, M, ...): latents (C, h, w), or pixels (3, R, R) when
  `uses_pixels(config)`; clips of video streams (3, F, R, R) or (C, 1 + (F-1)/4, h, w)."""
  m = config.model
  b, l, slots = int(config.train.global_batch_size), int(config.max_seq_len), slots_per_row(config)
  p = m.patch_size
  frames = video_frames(config)
  if uses_pixels(config):
    key, shape = "pixel_values", pixel_shape(config)
    if frames:
      shape = shape[:1] + (frames,) + shape[1:]
  else:
    key, shape = "latents", (m.latent_channels, m.image_latent_height * p, m.image_latent_width * p)
    if frames:
      temporal = vae_encoder.vae_config(config).temporal_factor
      shape = shape[:1] + (1 + (frames - 1) // temporal,) + shape[1:]
  i32 = np.int32
  return {
      "text_tokens": jax.ShapeDtypeStruct((b, l), i32),
      "text_labels": jax.ShapeDtypeStruct((b, l), i32),
      "image_masks": jax.ShapeDtypeStruct((b, l), i32),
      "modality_positions": jax.ShapeDtypeStruct((b, slots, 2), i32),
      key: jax.ShapeDtypeStruct((b, slots) + shape, np.float32),
      "is_und": jax.ShapeDtypeStruct((b,), i32),
  }
