"""One serialized record format for our ArrayRecord files (raw media or latents).

A record is a flat dict. numpy arrays (latents, pixels) are stored in an
uncompressed .npz (no pickle); everything else (strings, bytes, lists of
dicts such as LLaVA conversations) as one JSON value, bytes as base64 so the
format stays pickle-free and readable from any language.
"""
from __future__ import annotations

import base64
import io
import json
import os
import threading
from typing import Iterable

import numpy as np

from showo2_jax import paths

_JSON_KEY = "__json__"
_BYTES_TAG = "__b64__"
# numpy parses each .npy header with ast.literal_eval, and CPython 3.11's AST
# constructor keeps its recursion depth in state shared by all threads: Grain's
# reader threads decoding at once can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython gh-106905; seen at step ~400 of a
# tiny_shapes stage 2). Decoding one record at a time costs microseconds.
_DECODE_LOCK = threading.Lock()


def encode_record(record: dict) -> bytes:
  arrays = {k: v for k, v in record.items() if isinstance(v, np.ndarray)}
  other = {k: ({_BYTES_TAG: base64.b64encode(v).decode()} if isinstance(v, bytes) else v)
           for k, v in record.items() if k not in arrays}
  buf = io.BytesIO()
  np.savez(buf, **arrays, **{_JSON_KEY: np.asarray(json.dumps(other))})
  return buf.getvalue()


def decode_record(data: bytes) -> dict:
  """Inverse of `encode_record`; safe to call from several threads at once."""
  with _DECODE_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as npz:
    record = {k: npz[k] for k in npz.files if k != _JSON_KEY}
    other = json.loads(str(npz[_JSON_KEY]))
  for k, v in other.items():
    record[k] = base64.b64decode(v[_BYTES_TAG]) if isinstance(v, dict) and _BYTES_TAG in v else v
  return record


def write_array_record(path: str | os.PathLike, records: Iterable[dict]) -> int:
  """Writes records to one ArrayRecord file atomically (tmp file, then rename)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  count = 0
  with paths.local_output(path) as local:  # gs://: written locally, uploaded when complete
    tmp = local + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
      for record in records:
        writer.write(encode_record(record))
        count += 1
    finally:
      writer.close()
    os.replace(tmp, local)
  return count
