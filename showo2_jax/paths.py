"""Paths are URIs: one helper for local folders and object stores (`gs://`, `s3://`, ...).

Every user path in the project (workdir, checkpoints, metrics, data and annotation
files, model inputs, `convert` outputs) goes through this module, so
`--workdir gs://bucket/run` writes into the bucket on every host, never into a
local folder named `gs:`. It is a thin layer over `etils.epath`, which is what
Orbax itself uses for its directories; array data goes through tensorstore.

A GCS emulator (e.g. `gcp-storage-emulator`) is selected by setting
`STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` alone. `configure_storage()` (run on
import) passes it on to the layers that do not read that variable themselves:
- tensorstore (Orbax's array store): `TENSORSTORE_GCS_HTTP_URL`;
- etils.epath: `EPATH_USE_TF=false`, so `gs://` goes through fsspec/gcsfs (which
  reads `STORAGE_EMULATOR_HOST`) instead of tf.io.gfile, which cannot be pointed
  at an emulator; gcsfs: `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` (no
  storage-control API on an emulator);
- TensorBoard: `train.metrics` writes event files through this module for URIs.
Values the user set explicitly are kept.

Usage:
  from showo2_jax import paths
  run = paths.path("gs://bucket/run")          # epath.Path
  paths.makedirs(run / "checkpoints")
  paths.write_text(run / "config.json", text)
"""
from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional, Union

from etils import epath

PathLike = Union[str, os.PathLike]
Path = epath.Path

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_URI_MARK = "://"


def configure_storage() -> None:
  """Passes `STORAGE_EMULATOR_HOST` on to tensorstore and etils.epath (see module doc).

  Safe to call many times; must run before the first GCS request of a process
  (this module calls it on import, and child processes inherit the variables).
  """
  host = os.environ.get(EMULATOR_ENV, "")
  if host in ("", "default"):
    return
  if not host.startswith(("http://", "https://")):
    host = "http://" + host
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
  os.environ.setdefault("EPATH_USE_TF", "false")
  # gcsfs/google-auth would otherwise probe the GCE metadata server for a project,
  # and gcsfs the storage-control API (which emulators lack) for every bucket's type.
  os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "emulator")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  _forget_epath_backend_choice()


def _forget_epath_backend_choice() -> None:
  """etils caches "use tf.io.gfile" on the first path it sees; a process that set
  STORAGE_EMULATOR_HOST after that (a test) must have the choice made again."""
  from etils.epath import gpath  # pylint: disable=import-outside-toplevel
  cached = getattr(gpath, "_is_tf_installed", None)
  if hasattr(cached, "cache_clear"):
    cached.cache_clear()


def _no_stale_listings() -> None:
  """Object-store listings are read fresh: another host (or tensorstore, which
  writes the arrays without going through fsspec) may have written since the last
  listing, and a stale one would miss a finished checkpoint."""
  import fsspec  # pylint: disable=import-outside-toplevel
  for protocol in ("gs", "gcs", "s3"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


configure_storage()
_no_stale_listings()


def is_uri(p: PathLike) -> bool:
  """True for `scheme://...` paths (object stores), False for local paths."""
  return _URI_MARK in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`; local paths are made absolute (logs and Orbax want that)."""
  if isinstance(p, epath.Path) and (is_uri(p) or p.is_absolute()):
    return p
  s = os.fspath(p)
  return epath.Path(s if is_uri(s) else os.path.abspath(os.path.expanduser(s)))


def as_str(p: PathLike) -> str:
  """`gs://bucket/x` or an absolute local path: what messages and libraries get."""
  return os.fspath(path(p))


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...` as a string, for URIs and local paths alike."""
  return os.fspath(path(base).joinpath(*parts))


def name(p: PathLike) -> str:
  """The last component (`basename`), for URIs and local paths alike."""
  return os.fspath(p).rstrip("/").rsplit("/", 1)[-1] if is_uri(p) else os.path.basename(
      os.fspath(p).rstrip(os.sep))


def parent(p: PathLike) -> str:
  """The containing folder (`dirname`) as a string."""
  return os.fspath(path(p).parent)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  q = path(p)
  return q.exists() and not q.is_dir()


def makedirs(p: PathLike) -> epath.Path:
  """`mkdir -p`; on object stores folders are implicit, so this is cheap there."""
  q = path(p)
  q.mkdir(parents=True, exist_ok=True)
  return q


def listdir(p: PathLike) -> list[str]:
  """Names (not paths) of the entries of folder `p`, sorted."""
  return sorted(c.name for c in path(p).iterdir())


def glob(pattern: PathLike) -> list[str]:
  """Sorted matches of a glob pattern (`*`, `?`, `[..]` in any component)."""
  s = os.fspath(pattern)
  if not is_uri(s):
    import glob as glob_lib  # pylint: disable=import-outside-toplevel
    return sorted(glob_lib.glob(os.path.expanduser(s)))
  scheme, rest = s.split(_URI_MARK, 1)
  bucket, _, key = rest.partition("/")
  root = epath.Path(f"{scheme}{_URI_MARK}{bucket}")
  return sorted(os.fspath(m) for m in root.glob(key)) if key else [os.fspath(root)]


def open(p: PathLike, mode: str = "r"):  # pylint: disable=redefined-builtin
  """A file object for `p` (modes r, w, a, each with b for bytes; text is UTF-8).

  On object stores a written file appears when closed (use it as a context
  manager), and append mode rewrites the object.
  """
  if not is_uri(p):
    return builtins.open(os.path.expanduser(os.fspath(p)), mode,
                         **({} if "b" in mode else {"encoding": "utf-8"}))
  return path(p).open(mode)


def read_text(p: PathLike) -> str:
  with open(p, "r") as f:
    return f.read()


def read_json(p: PathLike) -> Optional[Any]:
  """The parsed JSON file `p` (local or gs://), or None if there is no such file."""
  if not exists(p):
    return None
  return json.loads(read_text(p))


def read_bytes(p: PathLike) -> bytes:
  with open(p, "rb") as f:
    return f.read()


def write_text(p: PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `p`, creating the parent folder."""
  makedirs(parent(p))
  with open(p, "w") as f:
    f.write(text)


def write_bytes(p: PathLike, data: bytes) -> None:
  makedirs(parent(p))
  with open(p, "wb") as f:
    f.write(data)


def remove(p: PathLike) -> None:
  """Deletes a file or a whole folder; a missing `p` is not an error."""
  q = path(p)
  if not q.exists():
    return
  if q.is_dir():
    q.rmtree()
  else:
    q.unlink()


def rename(src: PathLike, dst: PathLike) -> None:
  """Moves `src` to `dst` (on object stores: copy then delete, not atomic)."""
  s, d = path(src), path(dst)
  if not is_uri(s) and not is_uri(d):
    d.parent.mkdir(parents=True, exist_ok=True)
    os.replace(s, d)
    return
  if s.is_dir():
    for child in s.iterdir():
      rename(child, d / child.name)
    s.rmtree(missing_ok=True)
  else:
    d.parent.mkdir(parents=True, exist_ok=True)
    s.copy(d, overwrite=True)
    s.unlink()


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
  """A local filesystem path with the contents of `p` (file or folder), for
  libraries that only read local files (mmap, torch.load, tokenizer folders).

  Local paths are yielded as they are; URIs are copied into a temporary folder
  that is deleted on exit.
  """
  if not is_uri(p):
    yield as_str(p)
    return
  src = path(p)
  tmp = tempfile.mkdtemp(prefix="showo2_jax_")
  try:
    dst = os.path.join(tmp, src.name)
    _copy_to_local(src, dst)
    yield dst
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _copy_to_local(src: epath.Path, dst: str) -> None:
  if src.is_dir():
    os.makedirs(dst, exist_ok=True)
    for child in src.iterdir():
      _copy_to_local(child, os.path.join(dst, child.name))
  else:
    with src.open("rb") as fin, builtins.open(dst, "wb") as fout:
      shutil.copyfileobj(fin, fout, 16 << 20)


@contextlib.contextmanager
def local_output(p: PathLike) -> Iterator[str]:
  """A local path through which to write `p` (a file or a folder) with libraries
  that only write local files (PIL, imageio video, torch.save, safetensors,
  ArrayRecord).

  Local `p`: `p` itself (its parent folder created). URIs: a path in a temporary
  folder, uploaded to `p` when the block exits without an error, then deleted; on
  an error nothing is uploaded.
  """
  if not is_uri(p):
    makedirs(parent(p))
    yield as_str(p)
    return
  tmp = tempfile.mkdtemp(prefix="showo2_jax_out_")
  try:
    local = os.path.join(tmp, name(p))
    yield local
    if os.path.exists(local):
      copy_from_local(local, p)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def copy_from_local(local: PathLike, dst: PathLike) -> None:
  """Uploads a local file or folder to `dst` (a URI or another local path)."""
  local = os.fspath(local)
  if os.path.isdir(local):
    for entry in os.listdir(local):
      copy_from_local(os.path.join(local, entry), join(dst, entry))
    return
  d = path(dst)
  d.parent.mkdir(parents=True, exist_ok=True)
  epath.Path(local).copy(d, overwrite=True)


class Appender:
  """A growing file (a log, metrics.jsonl, TensorBoard events) that readers may
  follow while it is written.

  Local: appended and flushed on every `flush()`. Object stores cannot append, so
  there the whole object is rewritten, at most every `min_interval_s` seconds
  (the interval grows with the size, ~1 s per MiB) and always on `close()`; a
  kill -9 loses at most that window. Existing content is kept (a resumed run
  appends to the same file).
  """

  def __init__(self, p: PathLike, min_interval_s: float = 2.0):
    self.path = as_str(p)
    self._uri = is_uri(self.path)
    self._min_interval = float(min_interval_s)
    self._last_upload = 0.0
    self._dirty = False
    if self._uri:
      self._buffer = bytearray(read_bytes(self.path) if exists(self.path) else b"")
    else:
      makedirs(parent(self.path))
      self._file = builtins.open(self.path, "ab")

  def write(self, data: bytes | str) -> None:
    data = data.encode("utf-8") if isinstance(data, str) else data
    if self._uri:
      self._buffer += data
      self._dirty = True
    else:
      self._file.write(data)

  def flush(self, force: bool = False) -> None:
    if not self._uri:
      self._file.flush()
      return
    import time  # pylint: disable=import-outside-toplevel
    interval = max(self._min_interval, len(self._buffer) / (1 << 20))
    if self._dirty and (force or time.monotonic() - self._last_upload >= interval):
      write_bytes(self.path, bytes(self._buffer))
      self._last_upload, self._dirty = time.monotonic(), False

  def close(self) -> None:
    if self._uri:
      self.flush(force=True)
    else:
      self._file.close()

  def size(self) -> int:
    return len(self._buffer) if self._uri else self._file.tell()
