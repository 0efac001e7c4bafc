"""Grain sources: annotation files or ArrayRecord shards -> `grain.MapDataset` of records.

A record is a plain dict; media paths are already resolved against the media
root (the annotation file's folder unless given), so a record is
self-contained and can be read in any worker process. Media are not opened
here (that is the task's job, in the workers); what fails here fails fast: a
missing annotation file, a malformed line (named by file and line number), a
record lacking a required key, an empty dataset.

Record kinds (see docs/data.md):
  image-text  {"path", "prompt"}                       (JSONL, stage 1)
  llava       {"conversations", "image"?}              (JSON list, stage 2)
  vist        {"images": [...], "captions": [...]}     (JSON list, mixed modality)
  video-text  {"path" (file or frame folder), "prompt"} (JSONL)
  array-record: any of the above with media as bytes ("image_bytes") or
                precomputed "latents" (record_io format).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import grain

from showo2_jax.data import record_io


class DataFormatError(ValueError):
  """A malformed annotation file; the message names the file and the line."""


class EmptyDatasetError(ValueError):
  """A dataset with no records: fail before training starts, not after."""


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
  """Parses a JSONL file; blank lines are ignored, anything else must be an object."""
  records = []
  with open(_existing(path)) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg}): {line.strip()[:200]}") from e
      _check_record(record, required, f"{path}:{lineno}")
      records.append(record)
  return _non_empty(records, path)


def read_json_list(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
  """Parses a JSON file holding a list of objects (LLaVA, VIST annotations)."""
  with open(_existing(path)) as f:
    try:
      records = json.load(f)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
  if not isinstance(records, list):
    raise DataFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
  for i, record in enumerate(records):
    _check_record(record, required, f"{path}: record {i}")
  return _non_empty(records, path)


def image_text_source(jsonl_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """Stage-1 image-text pairs: lines {"path": image, "prompt": caption}."""
  root = _root(jsonl_path, media_root)
  return grain.MapDataset.source([
      {**r, "path": os.path.join(root, r["path"])}
      for r in read_jsonl(jsonl_path, ("path", "prompt"))])


def video_text_source(jsonl_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """Video-text pairs: lines {"path": video file or frame folder, "prompt": caption}."""
  return image_text_source(jsonl_path, media_root)


def llava_source(json_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """LLaVA conversations; "image" (optional) is relative to `media_root`."""
  root = _root(json_path, media_root)
  records = []
  for r in read_json_list(json_path, ("conversations",)):
    r = dict(r)
    if "image" in r:
      r["image"] = os.path.join(root, r["image"])
    records.append(r)
  return grain.MapDataset.source(records)


def vist_source(json_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """VIST stories {"images", "captions"}; ".jpg" is appended where missing (7.4)."""
  root = _root(json_path, media_root)
  records = []
  for i, r in enumerate(read_json_list(json_path, ("images", "captions"))):
    if len(r["images"]) != len(r["captions"]):
      raise DataFormatError(f"{json_path}: record {i}: {len(r['images'])} images but "
                            f"{len(r['captions'])} captions")
    paths = [os.path.join(root, p if p.endswith(".jpg") else p + ".jpg") for p in r["images"]]
    records.append({**r, "images": paths})
  return grain.MapDataset.source(records)


def array_record_source(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> grain.MapDataset:
  """Records written by `record_io.write_array_record` (precompute, builders)."""
  paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
  for p in paths:
    _existing(p)
  source = grain.sources.ArrayRecordDataSource(paths)
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise EmptyDatasetError(f"no records in {paths}")
  return grain.MapDataset.source(source).map(record_io.decode_record)


def _existing(path) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"dataset file not found: {path}")
  return path


def _root(annotation_path, media_root) -> str:
  return os.fspath(media_root) if media_root else os.path.dirname(os.path.abspath(annotation_path))


def _check_record(record, required, where):
  if not isinstance(record, dict):
    raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
  missing = [k for k in required if k not in record]
  if missing:
    raise DataFormatError(f"{where}: missing keys {missing}")


def _non_empty(records, path):
  if not records:
    raise EmptyDatasetError(f"{path}: the dataset is empty")
  return records
