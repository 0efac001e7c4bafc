"""`train --data FILE`: a run's data streams in a file of their own.

A stage config says how to train; a data file says what on. It replaces the
config's `data` block (before any `--config.data.*` override), so the paper's
stages run on a user's files without forking a config:

    showo2-jax train --config stage1_1p5b --data my_data.yaml --workdir ...

Formats:
- YAML (`.yaml`/`.yml`) or JSON: a mapping

      seed: 0                      # optional, as every top-level field
      num_workers: 2
      rows_per_batch: 8            # only with stream weights (below)
      streams:                     # in batch order (generation rows first)
        t2i:  {task: t2i, path: /data/t2i/*.jsonl, batch_size: 6, min_res: [256, 256]}
        mmu:  {task: captioning, path: /data/cap.jsonl, batch_size: 2}

- Python (`.py`): a file whose `get_config()` returns the same block, usually
  built with `configs/data.py` (`from configs import data; data.stage1(...)`).

Stream fields are those of `configs/data.py:stream` (task, source, path,
media_root, batch_size, min_res, cond_dropout_prob, stage, num_frames,
max_num_images); `path` may be a glob for `files` and `array_record` sources.
Mixing: every batch holds `batch_size` rows of each stream (the original's
`concat_max_size_cycle`); instead of batch sizes, streams may give `weight`s,
which split `rows_per_batch` (must divide exactly). Errors name the file, the
stream and the field.
"""
from __future__ import annotations

import json
import os

import ml_collections

from showo2_jax import paths

TOP_FIELDS = dict(seed=0, num_workers=0, read_threads=2, prefetch_buffer=16, worker_buffer_size=2,
                  max_consecutive_skips=1000)
STREAM_FIELDS = dict(task=None, source="files", path=None, media_root="", batch_size=None,
                     min_res=(), cond_dropout_prob=0.1, stage="tuning", num_frames=17,
                     max_num_images=4)
TASKS = ("t2i", "captioning", "llava", "llava_multi_image", "vist", "edit", "video_t2i",
         "video_captioning")
VIDEO_TASKS = ("video_t2i", "video_captioning")
SOURCES = ("files", "array_record", "tfds")


class DataFileError(ValueError):
  """A data file that cannot be used (the message names the file and field)."""


def load(path: str, *, check_paths: bool = True) -> ml_collections.ConfigDict:
  """The `data` block of `path` (.py, .yaml, .yml, .json), checked (with
  `check_paths`, every files/array_record path must match a file)."""
  if not paths.isfile(path):
    raise DataFileError(f"--data {path}: no such file")
  ext = os.path.splitext(str(path))[1].lower()
  if ext == ".py":
    from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
    raw = config_lib.load_config(str(path))
  elif ext in (".yaml", ".yml", ".json"):
    text = paths.read_text(path)
    try:
      if ext == ".json":
        raw = json.loads(text)
      else:
        import yaml  # pylint: disable=import-outside-toplevel
        raw = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
      raise DataFileError(f"--data {path}: cannot parse ({e})") from None
  else:
    raise DataFileError(f"--data {path}: expected a .py, .yaml, .yml or .json file")
  if isinstance(raw, ml_collections.ConfigDict):
    raw = raw.to_dict()
  if not isinstance(raw, dict):
    raise DataFileError(f"--data {path}: expected a mapping with `streams`, got {type(raw).__name__}")
  return normalise(raw, str(path), check_paths=check_paths)


def normalise(raw: dict, where: str = "data", *, check_paths: bool = True) -> ml_collections.ConfigDict:
  """A checked data block (configs/data.py's layout) from a plain mapping."""
  raw = dict(raw)
  streams = raw.pop("streams", None)
  if not isinstance(streams, dict) or not streams:
    raise DataFileError(f"{where}: `streams` must be a non-empty mapping of name -> stream")
  order = tuple(raw.pop("stream_order", None) or streams)
  rows = raw.pop("rows_per_batch", None)
  unknown = sorted(set(raw) - set(TOP_FIELDS))
  if unknown:
    raise DataFileError(f"{where}: unknown field(s) {unknown} (known: streams, stream_order, "
                        f"rows_per_batch, {', '.join(TOP_FIELDS)})")
  bad_order = [n for n in order if n not in streams]
  if bad_order or len(set(order)) != len(order):
    raise DataFileError(f"{where}: stream_order {list(order)} must name each stream of "
                        f"{sorted(streams)} once")
  c = ml_collections.ConfigDict({k: raw.get(k, v) for k, v in TOP_FIELDS.items()})
  c.streams = ml_collections.ConfigDict()
  weights = {}
  for name in order:
    s = dict(streams[name] or {})
    here = f"{where}: stream {name!r}"
    if "weight" in s:
      weights[name] = float(s.pop("weight"))
    unknown = sorted(set(s) - set(STREAM_FIELDS))
    if unknown:
      raise DataFileError(f"{here}: unknown field(s) {unknown} (known: weight, {', '.join(STREAM_FIELDS)})")
    for req in ("task", "path"):
      if not s.get(req):
        raise DataFileError(f"{here}: `{req}` is required")
    if s["task"] not in TASKS:
      raise DataFileError(f"{here}: task {s['task']!r} is not one of {list(TASKS)}")
    if s.get("source", "files") not in SOURCES:
      raise DataFileError(f"{here}: source {s['source']!r} is not one of {list(SOURCES)}")
    if (s.get("batch_size") is None) == (name not in weights):
      raise DataFileError(f"{here}: give exactly one of `batch_size` and `weight`")
    full = {k: s.get(k, v) for k, v in STREAM_FIELDS.items()}
    full["min_res"] = tuple(full["min_res"] or ())
    full["path"] = str(full["path"])
    if check_paths and full["source"] in ("files", "array_record") and not paths.glob(full["path"]):
      raise DataFileError(f"{here}: path {full['path']!r} matches no file")
    c.streams[name] = ml_collections.ConfigDict(full)
  if weights:
    if len(weights) != len(order):
      raise DataFileError(f"{where}: weights must be given for every stream or none")
    if not rows:
      raise DataFileError(f"{where}: stream weights need `rows_per_batch` (rows per host per step)")
    total = sum(weights.values())
    for name, w in weights.items():
      n = w / total * int(rows)
      if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise DataFileError(f"{where}: weight {w} of stream {name!r} gives {n:g} of {rows} rows; "
                            f"weights must split rows_per_batch into whole rows (>= 1)")
      c.streams[name].batch_size = int(round(n))
  c.stream_order = order
  try:
    video_frames(c.streams, order)
  except ValueError as e:
    raise DataFileError(f"{where}: {e}") from None
  return c


def video_frames(streams, order) -> int:
  """`num_frames` of the video streams (0: none). Video clips (3, F, R, R) and images
  (3, R, R) cannot share a batch, nor can clips of different lengths: mixed data
  blocks raise ValueError (train video in a run of its own)."""
  video = {n: int(streams[n].num_frames) for n in order if streams[n].task in VIDEO_TASKS}
  if not video:
    return 0
  images = [n for n in order if n not in video]
  if images:
    raise ValueError(f"video streams {sorted(video)} cannot share a batch with image streams "
                     f"{images} (clips are (3, F, R, R), images (3, R, R)); train them in "
                     f"separate runs")
  if len(set(video.values())) > 1:
    raise ValueError(f"video streams must agree on num_frames, got {video}")
  frames = next(iter(video.values()))
  if frames < 1 or (frames - 1) % 4:
    raise ValueError(f"num_frames must be 1 + 4k for the Wan VAE, got {frames}")
  return frames
