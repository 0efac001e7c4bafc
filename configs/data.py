"""Data settings per training stage (spec 7.2-7.4), to put in a run config as `c.data`.

    c.data = data.stage1("data/t2i.jsonl", "data/captions.jsonl")

Every batch holds `batch_size` rows of each stream, in `stream_order`
(generation rows first, like the original's loader list). Read by
`showo2_jax.data.build.pipeline_from_config`.

Stream fields:
  task         't2i' | 'captioning' | 'llava' | 'llava_multi_image' (LLaVA-OneVision
               rows with several <image>, max_num_images slots) | 'vist' | 'video_t2i' |
               'video_captioning' | 'edit' (JSONL {"source", "target", "instruction"})
  source       'files' (annotation file + media folder) | 'array_record' (glob of
               shards, e.g. precomputed latents) | 'tfds' (data dir of a built
               `showo2_records` dataset)
  path         the annotation file, shard glob or TFDS data dir
  media_root   media folder ('' = the annotation file's folder)
  batch_size   rows of this stream per batch (per host)
  min_res      (height, width) filter for image-text images, () = none
  cond_dropout_prob, stage, num_frames, max_num_images: task options
"""
import ml_collections


def stream(task, path, batch_size, **overrides):
  s = ml_collections.ConfigDict(dict(
      task=task, source="files", path=path, media_root="", batch_size=batch_size,
      min_res=(), cond_dropout_prob=0.1, stage="tuning", num_frames=17, max_num_images=4))
  s.update(overrides)
  return s


def base():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_workers = 0          # worker processes (0: in the training process)
  c.read_threads = 2         # threads per stream that decode and lay out rows
  c.prefetch_buffer = 16     # rows read ahead per stream
  c.worker_buffer_size = 2   # batches buffered per worker process
  c.max_consecutive_skips = 1000  # a stream skipping this many samples in a row fails
  c.streams = ml_collections.ConfigDict()
  c.stream_order = ()
  return c


def stage1(t2i_path, captioning_path, *, batch_size_t2i=6, batch_size_mmu=2, min_res=(256, 256)):
  """Stage 1 (7.2): image-text JSONL for generation (6/GPU) and captioning (2/GPU)."""
  c = base()
  c.streams.t2i = stream("t2i", t2i_path, batch_size_t2i, min_res=min_res)
  c.streams.mmu = stream("captioning", captioning_path, batch_size_mmu, min_res=min_res)
  c.stream_order = ("t2i", "mmu")
  return c


def stage2(t2i_path, llava_path, *, stage="tuning", media_root="", batch_size_t2i=4,
           batch_size_mmu=4, min_res=(512, 512)):
  """Stage 2 (7.3): t2i continues; LLaVA json for 'pre-training', 'pre-training-1-5', 'tuning'."""
  c = base()
  c.streams.t2i = stream("t2i", t2i_path, batch_size_t2i, min_res=min_res)
  c.streams.mmu = stream("llava", llava_path, batch_size_mmu, stage=stage, media_root=media_root)
  c.stream_order = ("t2i", "mmu")
  return c


def mixed_modality(vist_path, *, media_root="", batch_size=2):
  """Interleaved fine-tuning (7.4): VIST stories, up to 4 images per row."""
  c = base()
  c.streams.vist = stream("vist", vist_path, batch_size, media_root=media_root)
  c.stream_order = ("vist",)
  return c
