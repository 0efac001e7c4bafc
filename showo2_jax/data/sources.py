"""Grain sources: annotation files or ArrayRecord shards -> `grain.MapDataset` of records.

A record is a plain dict; media paths are already resolved against the media
root (the annotation file's folder unless given), so a record is
self-contained and can be read in any worker process. Media are not opened
here (that is the task's job, in the workers).

What is wrong with the whole file fails fast: a missing annotation file, a file
that is not a list, an empty dataset, or one whose every record is bad. A bad
record (a line that is not UTF-8 or not JSON, not an object, lacking a required
key, a field of the wrong type) does not stop the run: it stays in the source as
a marker `{BAD: "file:line: reason"}`, which the tasks turn into a counted skip
(`num_bad` in the training metrics) logged with that file:line, as a bad image is.

Record kinds (see docs/data.md):
  image-text  {"path", "prompt"}                       (JSONL, stage 1)
  llava       {"conversations", "image"? (a list: multi-image)} (JSON list, stage 2)
  vist        {"images": [...], "captions": [...]}     (JSON list, mixed modality)
  video-text  {"path" (file or frame folder), "prompt"} (JSONL)
  edit        {"source", "target", "instruction"}      (JSONL, image editing)
  array-record: any of the above with media as bytes ("image_bytes") or
                precomputed "latents" (record_io format).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Optional, Sequence

import grain

from showo2_jax import paths
from showo2_jax.data import record_io

_log = logging.getLogger(__name__)

# The key of a bad-record marker: {BAD: "file:line: what is wrong"}.
BAD = "__bad_record__"


class DataFormatError(ValueError):
  """A malformed annotation file; the message names the file and the line."""


class EmptyDatasetError(ValueError):
  """A dataset with no records: fail before training starts, not after."""


def bad_record(where: str, reason: str) -> dict:
  """The marker a bad record leaves in a source (see the module docstring)."""
  return {BAD: f"{where}: {reason}"}


def is_bad(record) -> bool:
  return isinstance(record, dict) and BAD in record


# Field checks per record kind: key -> (predicate, what it must be).
def _is_str(v):
  return isinstance(v, str)


def _is_str_list(v):
  return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_turns(v):
  return isinstance(v, list) and bool(v) and all(
      isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
      for t in v)


STR = (_is_str, "a string")
STR_LIST = (_is_str_list, "a list of strings")
TURNS = (_is_turns, 'a non-empty list of {"from": str, "value": str}')
IMAGE_TEXT_FIELDS = {"path": STR, "prompt": STR}
STR_OR_LIST = (lambda v: _is_str(v) or (_is_str_list(v) and bool(v)),
               "a string or a non-empty list of strings")
LLAVA_FIELDS = {"conversations": TURNS, "image": STR_OR_LIST}  # a list: multi-image samples
EDIT_FIELDS = {"source": STR, "target": STR, "instruction": STR}
VIST_FIELDS = {"images": STR_LIST, "captions": STR_LIST}


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (),
               fields: Optional[dict] = None) -> list[dict]:
  """Parses a JSONL file; blank lines are ignored. Bad lines become `bad_record`
  markers naming file and line (see the module docstring)."""
  records = []
  with paths.open(_existing(path), "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        records.append(bad_record(where, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                         f"{e.start + 1})"))
        continue
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        records.append(bad_record(where, f"invalid JSON ({e.msg}): {line.strip()[:200]}"))
        continue
      problem = record_problem(record, required, fields)
      records.append(bad_record(where, problem) if problem else record)
  return _non_empty(records, path)


def read_json_list(path: str | os.PathLike, required: Sequence[str] = (),
                   fields: Optional[dict] = None,
                   check: Optional[Callable[[dict], Optional[str]]] = None) -> list[dict]:
  """Parses a JSON file holding a list of objects (LLaVA, VIST annotations); bad
  records become `bad_record` markers naming the file and the record's index."""
  with paths.open(_existing(path), "rb") as f:
    raw = f.read()
  try:
    records = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataFormatError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x})") from None
  except json.JSONDecodeError as e:
    raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
  if not isinstance(records, list):
    raise DataFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
  out = []
  for i, record in enumerate(records):
    problem = record_problem(record, required, fields) or (check(record) if check else None)
    out.append(bad_record(f"{path}: record {i}", problem) if problem else record)
  return _non_empty(out, path)


def record_problem(record, required: Sequence[str] = (), fields: Optional[dict] = None):
  """What is wrong with a record (None if nothing): not an object, a missing
  required key, a field whose value is not what `fields` says."""
  if not isinstance(record, dict):
    return f"expected a JSON object, got {type(record).__name__}"
  missing = [k for k in required if k not in record]
  if missing:
    return f"missing keys {missing}"
  for key, (ok, what) in (fields or {}).items():
    if key in record and not ok(record[key]):
      return f"'{key}' must be {what}, got {type(record[key]).__name__} {str(record[key])[:60]!r}"
  return None


def image_text_source(jsonl_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """Stage-1 image-text pairs: lines {"path": image, "prompt": caption}."""
  root = _root(jsonl_path, media_root)
  return grain.MapDataset.source([
      r if is_bad(r) else {**r, "path": os.path.join(root, r["path"])}
      for r in read_jsonl(jsonl_path, ("path", "prompt"), IMAGE_TEXT_FIELDS)])


def video_text_source(jsonl_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """Video-text pairs: lines {"path": video file or frame folder, "prompt": caption}."""
  return image_text_source(jsonl_path, media_root)


def llava_source(json_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """LLaVA conversations; "image" (optional) is relative to `media_root`."""
  root = _root(json_path, media_root)
  records = []
  for r in read_json_list(json_path, ("conversations",), LLAVA_FIELDS):
    r = dict(r)
    if is_bad(r):
      pass
    elif isinstance(r.get("image"), list):  # LLaVA-OneVision multi-image samples
      r["image"] = [os.path.join(root, p) for p in r["image"]]
    elif "image" in r:
      r["image"] = os.path.join(root, r["image"])
    records.append(r)
  return grain.MapDataset.source(records)


def edit_source(jsonl_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """Image editing triples: lines {"source": image, "target": image, "instruction": text}."""
  root = _root(jsonl_path, media_root)
  records = [r if is_bad(r) else dict(r, source=os.path.join(root, r["source"]),
                                       target=os.path.join(root, r["target"]))
             for r in read_jsonl(jsonl_path, ("source", "target", "instruction"), EDIT_FIELDS)]
  return grain.MapDataset.source(records)


def _vist_problem(r) -> Optional[str]:
  if len(r["images"]) != len(r["captions"]):
    return f"{len(r['images'])} images but {len(r['captions'])} captions"
  return None


def vist_source(json_path: str | os.PathLike, media_root: str | None = None) -> grain.MapDataset:
  """VIST stories {"images", "captions"}; ".jpg" is appended where missing (7.4)."""
  root = _root(json_path, media_root)
  records = []
  for r in read_json_list(json_path, ("images", "captions"), VIST_FIELDS, _vist_problem):
    if not is_bad(r):
      r = {**r, "images": [os.path.join(root, p if p.endswith(".jpg") else p + ".jpg")
                           for p in r["images"]]}
    records.append(r)
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
  if not paths.exists(path):
    raise FileNotFoundError(f"dataset file not found: {path}")
  return path


def _root(annotation_path, media_root) -> str:
  # Media paths are joined with "/" (posix), which is also right for gs:// roots.
  return os.fspath(media_root) if media_root else paths.parent(annotation_path)


def _non_empty(records, path):
  if not records:
    raise EmptyDatasetError(f"{path}: the dataset is empty")
  bad = [r[BAD] for r in records if is_bad(r)]
  if len(bad) == len(records):
    raise DataFormatError(f"{path}: none of its {len(records)} records is usable; the first: "
                          f"{bad[0]}")
  if bad:
    _log.warning("%s: %d of %d records are bad and will be skipped (counted in num_bad); the "
                 "first: %s", path, len(bad), len(records), bad[0])
  return records
