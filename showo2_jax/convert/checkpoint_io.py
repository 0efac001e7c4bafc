"""Reading and writing PyTorch-side checkpoints as numpy, one tensor at a time.

Formats: `.safetensors` (validated by the `safetensors` library, whose header check
refuses overlapping, aliased or out-of-file offset ranges and truncated files, then
memory-mapped here so that bfloat16 and float8 stay themselves without torch), `.bin` / `.pth` (via
`torch.load(weights_only=True, mmap=True)`: no pickle code is executed; needs the
`torch` extra), single files or sharded with a `*.index.json`, and directories
holding any of these.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Iterator, Mapping, Optional

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_NP_TO_ST = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}

# The original Show-o2 saves through a diffusers-style ModelMixin: a single file is
# `pytorch_model.safetensors` / `pytorch_model.bin`, shards are indexed by
# `diffusion_pytorch_model.{safetensors,bin}.index.json`.
WEIGHT_FILE_NAMES = (
    "model.safetensors.index.json", "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json", "pytorch_model.safetensors",
    "pytorch_model.bin.index.json", "diffusion_pytorch_model.bin.index.json", "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
    "Wan2.1_VAE.pth",
)


class CheckpointFormatError(ValueError):
  """A checkpoint path that is missing, of an unknown layout, or corrupt."""


# ------------------------------------------------------------------ safetensors
class SafetensorsFile:
  """Memory-mapped safetensors file: `keys()`, `shape(k)`, `get(k)` (a numpy view)."""

  def __init__(self, path: str):
    self.path = path
    _validate_safetensors(path)
    self._file = open(path, "rb")
    try:
      (n,) = struct.unpack("<Q", self._file.read(8))
      header = json.loads(self._file.read(n))
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
      self._file.close()
      raise CheckpointFormatError(f"{path}: not a valid safetensors file ({e})") from e
    self.metadata = header.pop("__metadata__", None) or {}
    self._header = header
    self._base = 8 + n
    self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

  def keys(self):
    return list(self._header)

  def shape(self, key: str) -> tuple:
    return tuple(self._header[key]["shape"])

  def _info(self, key: str) -> dict:
    if key not in self._header:
      raise CheckpointFormatError(f"{self.path}: no tensor named '{key}'")
    info = self._header[key]
    if info["dtype"] not in SAFETENSORS_DTYPES:
      raise CheckpointFormatError(
          f"{self.path}: tensor '{key}' has dtype {info['dtype']}, which is not supported "
          f"(supported: {', '.join(SAFETENSORS_DTYPES)})")
    return info

  def dtype(self, key: str):
    return np.dtype(SAFETENSORS_DTYPES[self._info(key)["dtype"]])

  def get(self, key: str) -> np.ndarray:
    info = self._info(key)
    start, end = info["data_offsets"]
    arr = np.frombuffer(self._mmap, dtype=SAFETENSORS_DTYPES[info["dtype"]],
                        count=(end - start) // np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).itemsize,
                        offset=self._base + start)
    return arr.reshape(info["shape"])

  def release(self, key: str) -> None:
    """Drops the pages of `key` from this process's resident set.

    The data stays in the page cache and is faulted back in on the next access;
    streaming converters call this after copying a tensor so that their RSS
    stays at about one tensor instead of growing to the whole file.
    """
    if not hasattr(mmap, "MADV_DONTNEED"):
      return
    start, end = self._header[key]["data_offsets"]
    page = mmap.PAGESIZE
    lo = (self._base + start) // page * page
    hi = self._base + end
    if hi > lo:
      self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

  def close(self):
    try:
      self._mmap.close()
    except BufferError:  # numpy views still alive: the map is freed with them
      pass
    self._file.close()


def _validate_safetensors(path: str) -> None:
  """The safetensors library's own header check: every tensor's offset range lies in
  the file, matches its shape and dtype, and ranges neither overlap nor leave gaps.
  Raises CheckpointFormatError naming the file (and the tensor, as the library does)."""
  import safetensors  # pylint: disable=import-outside-toplevel
  try:
    with safetensors.safe_open(path, framework="numpy"):
      pass
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise CheckpointFormatError(f"{path}: not a valid safetensors file ({e})") from None


def save_safetensors(tensors: Mapping[str, np.ndarray] | Iterator[tuple[str, np.ndarray]], path: str,
                     metadata: Optional[dict] = None) -> None:
  """Writes tensors in safetensors format (written to a temp file, then renamed).

  `tensors` may be a mapping or an iterable of (name, array); with an iterable of
  lazily produced arrays, only one tensor is in memory at a time beyond the header
  pass (shapes/dtypes are needed first, so a generator is consumed twice: pass a
  mapping of lazy objects with `.shape`/`.dtype` and `__array__` for true streaming).
  """
  items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
  header, offset = {}, 0
  for name, arr in items:
    dt = np.dtype(arr.dtype)
    if dt not in _NP_TO_ST:
      raise CheckpointFormatError(f"cannot write tensor {name} of dtype {dt} to safetensors")
    nbytes = int(np.prod(arr.shape, dtype=np.int64)) * dt.itemsize
    header[name] = {"dtype": _NP_TO_ST[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for _, arr in items:
      f.write(np.ascontiguousarray(np.asarray(arr)).tobytes())
  os.replace(tmp, path)


# ---------------------------------------------------------------- torch pickles
def _torch_load(path: str) -> dict:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointFormatError(
        f"{path}: reading .bin/.pth needs PyTorch (pip install -e '.[torch]'); "
        "safetensors files need nothing extra") from e
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # noqa: BLE001
    raise CheckpointFormatError(f"{path}: could not be read as a weights-only torch checkpoint ({e})") from e
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise CheckpointFormatError(f"{path}: expected a state_dict, found {type(sd).__name__}")
  return sd


def torch_tensor_to_numpy(t) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class TorchFile:
  def __init__(self, path: str):
    self.path = path
    self._sd = _torch_load(path)

  def keys(self):
    return list(self._sd)

  def shape(self, key):
    return tuple(self._sd[key].shape)

  def dtype(self, key):
    import torch  # pylint: disable=import-outside-toplevel
    return torch_tensor_to_numpy(torch.empty((0,), dtype=self._sd[key].dtype)).dtype

  def get(self, key):
    return torch_tensor_to_numpy(self._sd[key])

  def release(self, key):  # torch owns the mapping; its pages are clean and reclaimable
    del key

  def close(self):
    self._sd = None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The whole state_dict of a checkpoint file or directory as numpy (for small
  checkpoints such as the Wan VAE; large ones are read key by key with StateDict).
  .pth/.bin are read weights-only. Raises CheckpointFormatError."""
  with StateDict(os.fspath(path)) as sd:
    return {k: sd[k] for k in sd.keys()}


# ------------------------------------------------------------------- directories
class StateDict:
  """A lazy, read-only view of a (possibly sharded) checkpoint: key -> numpy."""

  def __init__(self, path: str):
    self.path = path
    self._files: dict[str, object] = {}
    self._where: dict[str, str] = {}
    for file, keys in _resolve(path).items():
      for k in keys if keys is not None else self._open(file).keys():
        self._where[k] = file

  def _open(self, file):
    if file not in self._files:
      if not os.path.exists(file):
        raise CheckpointFormatError(f"{file}: listed in the index but missing")
      self._files[file] = SafetensorsFile(file) if file.endswith(".safetensors") else TorchFile(file)
    return self._files[file]

  def keys(self):
    return list(self._where)

  def __contains__(self, key):
    return key in self._where

  def __len__(self):
    return len(self._where)

  def shape(self, key):
    return self._open(self._file_of(key)).shape(key)

  def dtype(self, key) -> np.dtype:
    return np.dtype(self._open(self._file_of(key)).dtype(key))

  def release(self, key) -> None:
    """Lets go of the memory behind `key` (see `SafetensorsFile.release`)."""
    self._open(self._file_of(key)).release(key)

  def files(self) -> list[str]:
    """The weight files behind this state_dict, in first-use order."""
    return list(dict.fromkeys(self._where.values()))

  def _file_of(self, key) -> str:
    if key not in self._where:
      raise CheckpointFormatError(f"{self.path}: no tensor named '{key}'")
    return self._where[key]

  def __getitem__(self, key) -> np.ndarray:
    return self._open(self._file_of(key)).get(key)

  def items(self):
    for k in self._where:
      yield k, self[k]

  def close(self):
    for f in self._files.values():
      f.close()
    self._files.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _resolve(path: str) -> dict[str, Optional[list]]:
  """file -> keys it holds (None = read them from the file)."""
  if not os.path.exists(path):
    raise CheckpointFormatError(f"{path}: no such file or directory")
  if os.path.isdir(path):
    for name in WEIGHT_FILE_NAMES:
      if os.path.exists(os.path.join(path, name)):
        return _resolve(os.path.join(path, name))
    candidates = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pth", ".pt")))
    if len(candidates) == 1:
      return _resolve(os.path.join(path, candidates[0]))
    raise CheckpointFormatError(
        f"{path}: no weights found (expected one of {', '.join(WEIGHT_FILE_NAMES)}"
        + (f"; found several candidates {candidates}" if candidates else "") + ")")
  if path.endswith(".index.json"):
    with open(path) as f:
      index = json.load(f)
    if "weight_map" not in index:
      raise CheckpointFormatError(f"{path}: index has no weight_map")
    root = os.path.dirname(path)
    files: dict[str, list] = {}
    for key, file in index["weight_map"].items():
      files.setdefault(os.path.join(root, file), []).append(key)
    return files
  if path.endswith((".safetensors", ".bin", ".pth", ".pt")):
    return {path: None}
  raise CheckpointFormatError(f"{path}: unknown checkpoint format (want .safetensors, .bin, .pth or an index)")
