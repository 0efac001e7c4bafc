"""The pipeline a data config describes (configs/data.py): streams, mix, workers.

    tok, special = tokenizer.load_tokenizer(qwen_dir)
    loader = build.pipeline_from_config(c.data, tok, special,
                                        resolution=c.resolution, max_seq_len=c.max_seq_len)
    it = iter(loader)                 # get_state()/set_state() for checkpoints
    batch = next(it)                  # numpy dict, see pipeline.py
    arrays = pipeline.global_batch(batch, mesh)
"""
from __future__ import annotations

import glob
from typing import NamedTuple

import grain

from showo2_jax import paths as paths_lib
from showo2_jax.data import pipeline
from showo2_jax.data import sources
from showo2_jax.data import tasks


class TaskSpec(NamedTuple):
  record_kind: str        # which file source reads it
  cls: type               # the tasks.Task subclass
  fixed: dict             # options fixed by the task name
  options: tuple          # stream config fields passed through


TASKS = {
    "t2i": TaskSpec("image_text", tasks.ImageTextTask, dict(captioning=False),
                    ("cond_dropout_prob", "min_res")),
    "captioning": TaskSpec("image_text", tasks.ImageTextTask, dict(captioning=True), ("min_res",)),
    "llava": TaskSpec("llava", tasks.LlavaTask, {}, ("stage",)),
    # LLaVA-OneVision multi-image conversations: M = max_num_images slots per row.
    "llava_multi_image": TaskSpec("llava", tasks.LlavaTask, {}, ("stage", "max_num_images")),
    "edit": TaskSpec("edit", tasks.EditTask, {}, ("cond_dropout_prob",)),
    "vist": TaskSpec("vist", tasks.VistTask, {}, ("max_num_images",)),
    "video_t2i": TaskSpec("video_text", tasks.VideoTextTask, dict(captioning=False),
                          ("cond_dropout_prob", "num_frames")),
    "video_captioning": TaskSpec("video_text", tasks.VideoTextTask, dict(captioning=True),
                                 ("num_frames",)),
}
FILE_SOURCES = {
    "image_text": sources.image_text_source,
    "llava": sources.llava_source,
    "vist": sources.vist_source,
    "video_text": sources.video_text_source,
    "edit": sources.edit_source,
}


def task_spec(name: str) -> TaskSpec:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; one of {sorted(TASKS)}")
  return TASKS[name]


def load_records(kind: str, source: str, path: str, media_root: str | None = None):
  """Records (grain.MapDataset) of a record kind from annotation files (a path or a
  glob: the files' records concatenated in name order), shards or TFDS."""
  if source == "files":
    files = paths_lib.glob(path) if glob.has_magic(path) else [path]
    if not files:
      raise FileNotFoundError(f"no annotation files match {path!r}")
    parts = [FILE_SOURCES[kind](f, media_root) for f in files]
    return parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
  if source == "array_record":
    files = paths_lib.glob(path)
    if not files:
      raise FileNotFoundError(f"no ArrayRecord files match {path!r}")
    return sources.array_record_source(files)
  if source == "tfds":
    from showo2_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
    return tfds_builder.tfds_source(path)
  raise ValueError(f"unknown source {source!r}: 'files', 'array_record' or 'tfds'")


def records_from_config(s):
  """The records of one stream config."""
  return load_records(task_spec(s.task).record_kind, s.source, s.path, s.media_root or None)


def task_from_config(s, tokenizer, special, *, resolution, max_seq_len, vae_stride=8,
                     patch_size=2):
  """The task object of one stream config (`vae_stride` x `patch_size` pixels per visual token)."""
  spec = task_spec(s.task)
  return spec.cls(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len,
                  vae_stride=vae_stride, patch_size=patch_size,
                  **spec.fixed, **{k: s[k] for k in spec.options})


def pipeline_from_config(cfg, tokenizer, special, *, resolution: int, max_seq_len: int,
                         process_index: int | None = None, process_count: int | None = None,
                         vae_stride: int = 8, patch_size: int = 2):
  """The mixed, sharded, resumable loader (a grain.IterDataset) of `cfg`.

  Every visual block has (resolution / vae_stride / patch_size)^2 + 1 slots: pass
  the run's VAE stride (Wan2.1: 8) and the model's patch size."""
  shard_index, shard_count = pipeline.shard_options(process_index, process_count)
  streams = [pipeline.Stream(name, records_from_config(cfg.streams[name]),
                             task_from_config(cfg.streams[name], tokenizer, special,
                                              resolution=resolution, max_seq_len=max_seq_len,
                                              vae_stride=vae_stride, patch_size=patch_size),
                             cfg.streams[name].batch_size)
             for name in cfg.stream_order]
  mixed = pipeline.mixed_batches(streams, seed=cfg.seed, shard_index=shard_index,
                                 shard_count=shard_count, read_threads=cfg.read_threads,
                                 prefetch_buffer=cfg.prefetch_buffer,
                                 max_consecutive_skips=cfg.max_consecutive_skips)
  return pipeline.make_loader(mixed, num_workers=cfg.num_workers,
                              worker_buffer_size=cfg.worker_buffer_size)
