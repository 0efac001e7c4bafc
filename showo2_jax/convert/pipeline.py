"""PyTorch <-> Orbax conversion, one tensor at a time.

to_orbax: the source is memory-mapped (safetensors) or lazily loaded (torch
  `mmap=True`); each stored leaf is built from its tensor(s), the pages read are
  released, and leaves are flushed to Orbax in chunks of `chunk_bytes`. Peak
  memory is about one chunk plus the largest leaf, never the whole model.
to_torch: leaves are read back from Orbax a few at a time (partial loads) and
  written shard by shard (`max_shard_size`), with the source's key names, order,
  dtypes and config files when it was a conversion. Show-o2 is written as the
  original loads it (`from_pretrained(..., use_safetensors=False)` in all its
  scripts): `pytorch_model.bin`, or `pytorch_model-0000i-of-0000n.bin` shards with
  `diffusion_pytorch_model.bin.index.json` (its diffusers-style ModelMixin) and
  `pytorch_model.bin.index.json` (transformers); Qwen2 / SigLIP as HF safetensors.
  `format="safetensors"` writes safetensors for Show-o2 too.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import time
from typing import Any, Optional

import numpy as np

from showo2_jax import param_mapping, paths
from showo2_jax.convert import checkpoint_io, orbax_io, sources
from showo2_jax.convert import plan as plan_lib

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
# File names the loaders of each kind look for (see docs/convert.md).
WEIGHT_STEMS = {"showo2": "pytorch_model", "qwen2": "model", "siglip": "model"}
FORMATS = ("bin", "safetensors")
DEFAULT_FORMAT = {"showo2": "bin", "qwen2": "safetensors", "siglip": "safetensors"}
INDEX_NAMES = {
    # The original's ModelMixin reads `pytorch_model.{bin,safetensors}`, and shards
    # through diffusers' index name; the second index is the usual HF name, for other tools.
    ("showo2", "bin"): ("diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json"),
    ("showo2", "safetensors"): ("diffusion_pytorch_model.safetensors.index.json",
                                "model.safetensors.index.json"),
    ("qwen2", "safetensors"): ("model.safetensors.index.json",),
    ("siglip", "safetensors"): ("model.safetensors.index.json",),
    ("qwen2", "bin"): ("pytorch_model.bin.index.json",),
    ("siglip", "bin"): ("pytorch_model.bin.index.json",),
}
# What the original's constructor reads (`AutoConfig.from_pretrained(llm_model_path)`,
# `SiglipModel.from_pretrained(clip_pretrained_model_path)`), by model width.
LLM_MODEL_PATHS = {1536: "Qwen/Qwen2.5-1.5B-Instruct", 3584: "Qwen/Qwen2.5-7B-Instruct"}
CLIP_MODEL_PATHS = {1152: "google/siglip-so400m-patch14-384"}
DTYPES = ("float32", "bfloat16", "float16")


class ConversionError(ValueError):
  """A conversion that cannot be done as asked (the message says why)."""


def np_dtype(name: Optional[str]):
  if name is None:
    return None
  if name not in DTYPES:
    raise ConversionError(f"unsupported dtype '{name}' (choose from {', '.join(DTYPES)})")
  return np.dtype(name)


def parse_size(text) -> int:
  """'5GB', '500MB', '2GiB', '1e9' or an int -> bytes."""
  if isinstance(text, (int, float)):
    return int(text)
  m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)\s*", str(text), re.IGNORECASE)
  if not m:
    raise ConversionError(f"cannot parse size '{text}' (examples: 5GB, 500MB, 2GiB, 1000000)")
  unit = m.group(2).upper().rstrip("B")
  base = 1024 if unit.endswith("I") else 1000
  power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
  return int(float(m.group(1)) * base ** power)


# ----------------------------------------------------------------------- to-orbax
def to_orbax(src: str, out: str, *, kind: Optional[str] = None, dtype: Optional[str] = None,
             scan_layers: bool = False, resize_vocab: Optional[int] = None,
             chunk_bytes: int = orbax_io.DEFAULT_CHUNK_BYTES, overwrite: bool = False) -> dict:
  """Converts a PyTorch-side checkpoint into an Orbax checkpoint at `out`."""
  start = time.time()
  cast = np_dtype(dtype)
  if paths.as_str(src) == paths.as_str(out):
    raise ConversionError("--out must differ from the source")
  with paths.local_copy(src) as local_src:  # the weights are memory-mapped: gs:// is copied here
    return _to_orbax(src, local_src, out, kind=kind, dtype=dtype, cast=cast, scan_layers=scan_layers,
                     resize_vocab=resize_vocab, chunk_bytes=chunk_bytes, overwrite=overwrite,
                     start=start)


def _to_orbax(src, local_src, out, *, kind, dtype, cast, scan_layers, resize_vocab, chunk_bytes,
              overwrite, start) -> dict:
  source = sources.open_source(local_src, kind, scan_layers=scan_layers, resize_vocab=resize_vocab)
  with source.state_dict as sd:
    record = dict(source.record, cast=dtype)
    if paths.is_uri(src):
      record["path"] = paths.as_str(src)
    meta = orbax_io.make_meta(source.kind, source.config, scan_layers=scan_layers, source=record)
    if source.kind == "wan_vae":
      params = param_mapping.flatten(sources.vae_to_flax(sd, source.config, cast))
      with orbax_io.ParamWriter(out, meta, chunk_bytes=chunk_bytes, overwrite=overwrite) as w:
        for path, value in params.items():
          w.add(path, value)
      tensors = len(params)
    else:
      match = param_mapping.match(source.plan, sd)
      match.raise_if_bad(src)
      param_mapping.warn_untied_copies(sd, source.plan, match, src)
      with orbax_io.ParamWriter(out, meta, chunk_bytes=chunk_bytes, overwrite=overwrite) as w:
        for leaf, entries in source.plan.by_leaf().items():
          w.add(leaf, _build_leaf(sd, match, entries, source.plan.leaves[leaf], cast))
      tensors = len(source.plan.entries)
  summary = {"kind": source.kind, "source": paths.as_str(src), "out": paths.as_str(out),
             "tensors": tensors, "leaves": w.leaves, "bytes": w.bytes,
             "seconds": round(time.time() - start, 2)}
  log.info("to-orbax: %s", summary)
  return summary


def _build_leaf(sd, match, entries, full_shape, cast) -> np.ndarray:
  if entries[0].layer is None:
    e = entries[0]
    return param_mapping.read_flax(sd, match.source_key[e.key], e, cast)
  leaf = None
  for e in entries:  # stacked layers: fill one preallocated array, a layer at a time
    x = param_mapping.read_flax(sd, match.source_key[e.key], e, cast)
    if leaf is None:
      leaf = np.empty(full_shape, x.dtype)
    elif x.dtype != leaf.dtype:
      raise ConversionError(f"{e.key} is {x.dtype} but earlier layers are {leaf.dtype}; "
                            "pass --dtype to convert a mixed-dtype checkpoint with stacked layers")
    leaf[e.layer] = x
  return leaf


# ------------------------------------------------------------------ leaf reading
class LeafReader:
  """Serves stored leaves in a known request order, loading a few at a time.

  Leaves are fetched with partial Orbax loads of up to `budget` bytes and dropped
  once their last request is served, so memory stays at about one budget.
  """

  def __init__(self, path: str, stored: dict, sequence: list[str], budget: int):
    self.path, self.stored, self.sequence, self.budget = path, stored, sequence, budget
    self._pos = 0
    self._cache: dict[str, np.ndarray] = {}
    self._left = collections.Counter(sequence)

  def _nbytes(self, leaf) -> int:
    m = self.stored[leaf]
    return math.prod(m.shape) * np.dtype(m.dtype).itemsize

  def take(self, leaf: str) -> np.ndarray:
    if self.sequence[self._pos] != leaf:
      raise RuntimeError(f"leaf {leaf} requested out of order (expected {self.sequence[self._pos]})")
    if leaf not in self._cache:
      want, size = [], 0
      for nxt in self.sequence[self._pos:]:
        if nxt in self._cache or nxt in want:
          continue
        if want and size + self._nbytes(nxt) > self.budget:
          break
        want.append(nxt)
        size += self._nbytes(nxt)
      self._cache.update(orbax_io.load_leaves(self.path, want, self.stored))
    value = self._cache[leaf]
    self._pos += 1
    self._left[leaf] -= 1
    if self._left[leaf] == 0:
      del self._cache[leaf]
    return value


class _LazyTensor:
  """A torch-side tensor produced only when the safetensors writer asks for it."""

  def __init__(self, key, entry, reader, dtype):
    self.key, self.entry, self.reader = key, entry, reader
    self.shape, self.dtype = entry.shape, np.dtype(dtype)

  def __array__(self, dtype=None, copy=None):
    del copy
    x = param_mapping.to_torch(self.reader.take(self.entry.leaf), self.entry)
    return x.astype(dtype or self.dtype, copy=False)


def check_stored(plan: param_mapping.Plan, stored: dict, path: str) -> None:
  """Every leaf of the plan is in the checkpoint, with its shape."""
  missing = sorted(set(plan.leaves) - set(stored))
  unexpected = sorted(set(stored) - set(plan.leaves))
  wrong = [f"{k} {tuple(stored[k].shape)} (expected {tuple(s)})" for k, s in plan.leaves.items()
           if k in stored and tuple(stored[k].shape) != tuple(s)]
  if missing or unexpected or wrong:
    raise param_mapping.KeyMismatchError(missing, unexpected, wrong, f"{path} (Orbax, {plan.kind})")


def leaf_major(plan: param_mapping.Plan, keys: list[str]) -> list[str]:
  """`keys` reordered so each leaf's tensors are consecutive (stacked leaves are
  then loaded once, not once per layer)."""
  rank = {}
  for k in keys:
    rank.setdefault(plan.entry(k).leaf, len(rank))
  return sorted(keys, key=lambda k: (rank[plan.entry(k).leaf], plan.entry(k).layer or 0))


def plan_from_meta(meta: dict) -> tuple[Any, Optional[param_mapping.Plan]]:
  kind = meta["kind"]
  config = orbax_io.config_from_dict(kind, meta["config"])
  if kind == "wan_vae":
    return config, None
  record = meta.get("source") or {}
  return config, plan_lib.build(kind, config, scan_layers=bool(meta.get("scan_layers")),
                                key_prefix=record.get("key_prefix", ""))


# ----------------------------------------------------------------------- to-torch
def to_torch(orbax_dir: str, out: str, *, dtype: Optional[str] = None,
             max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
             chunk_bytes: int = orbax_io.DEFAULT_CHUNK_BYTES, llm_model_path: Optional[str] = None,
             clip_model_path: Optional[str] = None, format: Optional[str] = None) -> dict:  # pylint: disable=redefined-builtin
  """Writes the PyTorch-side checkpoint of an Orbax checkpoint into directory `out`.

  `dtype`: None keeps the stored dtypes, 'source' restores the source's recorded
  dtypes, or a dtype name casts every tensor. `format`: 'bin' (torch.save, the
  default for Show-o2, needs torch) or 'safetensors' (the default for Qwen2/SigLIP).
  Show-o2's config.json gets `llm_model_path` / `clip_pretrained_model_path`: the
  ones given, else the source's, else the released names for the 1.5B/7B widths,
  else (other widths) a `llm/` folder written next to it with the LLM config.
  """
  start = time.time()
  meta = orbax_io.read_meta(orbax_dir)
  kind = meta["kind"]
  record = meta.get("source") or {}
  fmt = format or DEFAULT_FORMAT.get(kind)
  if kind != "wan_vae" and fmt not in FORMATS:
    raise ConversionError(f"unknown format '{format}' (choose from {', '.join(FORMATS)})")
  _prepare_out(out, overwrite)
  config, plan = plan_from_meta(meta)
  with paths.local_output(out) as local_out:  # gs:// outputs are written here, then uploaded
    paths.makedirs(local_out)
    if kind == "wan_vae":
      files, written = _vae_to_torch(orbax_dir, local_out, config, record, dtype)
    else:
      stored = orbax_io.stored_leaves(orbax_dir)
      check_stored(plan, stored, orbax_dir)
      keys = _output_keys(plan, record)
      dtypes = _output_dtypes(plan, keys, stored, record, dtype)
      files = _write_shards(orbax_dir, local_out, kind, plan, keys, dtypes, stored, max_shard_size,
                            chunk_bytes, fmt)
      written = len(keys)
    files += _write_configs(local_out, kind, config, record, llm_model_path, clip_model_path,
                            final_out=out)
  summary = {"kind": kind, "out": paths.as_str(out), "tensors": written, "files": files,
             "seconds": round(time.time() - start, 2)}
  log.info("to-torch: %s", summary)
  return summary


def _prepare_out(out: str, overwrite: bool) -> None:
  """`out` (a folder or gs:// prefix) must not be a file, nor hold files unless `overwrite`."""
  if paths.isfile(out):
    raise ConversionError(f"--out {out} is a file; give a directory")
  if paths.isdir(out) and paths.listdir(out) and not overwrite:
    raise FileExistsError(f"{out} is not empty (pass --overwrite to write into it)")
  paths.makedirs(out)


def _output_keys(plan: param_mapping.Plan, record: dict) -> list[str]:
  if not record.get("tensors"):
    return plan.default_keys()
  keys = [k for k, _, _ in record["tensors"] if k in plan.by_key or k in plan.aliases]
  # A tied head stored only under its alias covers the embedding it copies.
  covered = set(keys) | {plan.aliases[k] for k in keys if k in plan.aliases}
  return keys + [e.key for e in plan.entries if e.key not in covered]


def _output_dtypes(plan, keys, stored, record, dtype) -> dict[str, np.dtype]:
  recorded = {k: np.dtype(d) for k, d, _ in record.get("tensors", [])}
  out = {}
  for k in keys:
    if dtype == "source" and k in recorded:
      out[k] = recorded[k]
    elif dtype and dtype != "source":
      out[k] = np_dtype(dtype)
    else:
      out[k] = np.dtype(stored[plan.entry(k).leaf].dtype)
  return out


def group_into_shards(keys, sizes, max_shard_size) -> list[list[str]]:
  """Consecutive keys grouped so each group stays under max_shard_size (a lone
  larger tensor gets a group of its own)."""
  shards, current, size = [], [], 0
  for k in keys:
    if current and size + sizes[k] > max_shard_size:
      shards.append(current)
      current, size = [], 0
    current.append(k)
    size += sizes[k]
  if current:
    shards.append(current)
  return shards


def _write_shards(orbax_dir, out, kind, plan, keys, dtypes, stored, max_shard_size, chunk_bytes,
                  fmt="safetensors"):
  sizes = {k: math.prod(plan.entry(k).shape) * dtypes[k].itemsize for k in keys}
  shards = [leaf_major(plan, s) for s in group_into_shards(keys, sizes, max_shard_size)]
  reader = LeafReader(orbax_dir, stored, [plan.entry(k).leaf for s in shards for k in s], chunk_bytes)
  stem, n = WEIGHT_STEMS[kind], len(shards)
  names = [f"{stem}.{fmt}"] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.{fmt}" for i in range(n)]
  for name, shard in zip(names, shards):
    tensors = {k: _LazyTensor(k, plan.entry(k), reader, dtypes[k]) for k in shard}
    log.info("writing %s (%d tensors, %.1f MB)", name, len(shard), sum(sizes[k] for k in shard) / 1e6)
    if fmt == "bin":
      _torch_save_streamed(tensors, os.path.join(out, name))
    else:
      checkpoint_io.save_safetensors(tensors, os.path.join(out, name), metadata={"format": "pt"})
  files = list(names)
  if n > 1:
    index = {"metadata": {"total_size": sum(sizes.values())},
             "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
    for index_name in INDEX_NAMES[(kind, fmt)]:
      with open(os.path.join(out, index_name), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
      files.append(index_name)
  return files


def _vae_to_torch(orbax_dir, out, config, record, dtype) -> tuple[list[str], int]:
  _, _, params = orbax_io.restore_params(orbax_dir)
  sd = sources.vae_to_torch(params, config, record.get("vae_layout", "original"))
  recorded = {k: np.dtype(d) for k, d, _ in record.get("tensors", [])}
  order = [k for k, _, _ in record.get("tensors", []) if k in sd] or list(sd)
  out_sd = {}
  for k in order:
    want = recorded.get(k) if dtype == "source" else np_dtype(dtype) if dtype else None
    out_sd[k] = sd[k] if want is None else sd[k].astype(want)
  weights = (record.get("weights") or ["Wan2.1_VAE.pth"])[0]
  path = os.path.join(out, weights)
  if weights.endswith(".safetensors"):
    checkpoint_io.save_safetensors(out_sd, path, metadata={"format": "pt"})
  else:
    _torch_save(out_sd, path)
  return [weights], len(out_sd)


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=import-outside-toplevel
    return torch
  except ImportError as e:
    raise ConversionError(f"writing {os.path.basename(path)} needs PyTorch (pip install -e '.[torch]'), "
                          "or pass --format safetensors") from e


def _torch_save_streamed(tensors: dict, path: str) -> None:
  """torch.save of lazily produced tensors without holding the shard in memory.

  The tensors are written one at a time to a raw file, which is memory-mapped and
  wrapped as torch tensors (no copy); torch.save then reads them from the map, whose
  clean file-backed pages the kernel can drop. Peak anonymous memory: one tensor.
  """
  import mmap  # pylint: disable=import-outside-toplevel
  torch = _import_torch(path)
  raw, layout = path + ".raw", {}
  with open(raw, "wb") as f:
    for k, t in tensors.items():
      a = np.ascontiguousarray(np.asarray(t))
      layout[k] = (f.tell(), a.dtype, a.shape)
      f.write(a.tobytes())
  try:
    with open(raw, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else bytearray()
    out = {}
    for k, (offset, dt, shape) in layout.items():
      count = math.prod(shape)
      if count == 0:
        out[k] = torch.empty(shape, dtype=_torch_dtype(torch, dt))
        continue
      out[k] = torch.frombuffer(buf, dtype=_torch_dtype(torch, dt), count=count,
                                offset=offset).reshape(shape)
    torch.save(out, path + ".tmp")
    del out
    os.replace(path + ".tmp", path)
  finally:
    os.remove(raw)


def _torch_dtype(torch, dt: np.dtype):
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  if dt == ml_dtypes.bfloat16:
    return torch.bfloat16
  return torch.from_numpy(np.zeros(0, dt)).dtype


def _torch_save(sd: dict, path: str) -> None:
  torch = _import_torch(path)
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  tensors = {}
  for k, v in sd.items():
    v = np.ascontiguousarray(v)
    if v.dtype == ml_dtypes.bfloat16:
      tensors[k] = torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
    else:
      tensors[k] = torch.from_numpy(v)
  torch.save(tensors, path + ".tmp")
  os.replace(path + ".tmp", path)


def _write_configs(out, kind, config, record, llm_model_path, clip_model_path,
                   final_out=None) -> list[str]:
  files = dict(record.get("files") or {})
  if not files:
    files = _generated_configs(kind, config)
  if kind == "qwen2" and record.get("resize_vocab") and "config.json" in files:
    d = json.loads(files["config.json"])
    d["vocab_size"] = config.vocab_size
    files["config.json"] = json.dumps(d, indent=2)
  if kind == "showo2":
    files.update(_original_model_paths(final_out or out, config, json.loads(files["config.json"]),
                                       llm_model_path, clip_model_path))
  for name, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
      f.write(text)
  return list(files)


def _original_model_paths(out, config, top: dict, llm_model_path, clip_model_path) -> dict:
  """config.json with the paths the original's constructor reads filled in (see
  `to_torch`), plus `llm/config.json` when no released LLM has this width."""
  files = {}
  llm = llm_model_path or top.get("llm_model_path") or LLM_MODEL_PATHS.get(config.llm.hidden_size)
  if not llm:
    # No released Qwen2.5 of this width: its config goes in `llm/`, and the original
    # builds the LLM from that config alone (load_from_showo) and loads the weights here.
    llm = paths.as_str(paths.join(out, "llm"))
    files["llm/config.json"] = json.dumps(config.to_original_json()[1], indent=2)
    top["load_from_showo"] = True
  clip = (clip_model_path or top.get("clip_pretrained_model_path")
          or CLIP_MODEL_PATHS.get(config.siglip.hidden_size))
  if not clip:
    clip = CLIP_MODEL_PATHS[1152]
    log.warning("no released SigLIP has width %d: config.json names %s; pass --clip-model-path "
                "with a SigLIP of this architecture for the original to construct the model",
                config.siglip.hidden_size, clip)
  top["llm_model_path"], top["clip_pretrained_model_path"] = llm, clip
  files["config.json"] = json.dumps(top, indent=2)
  return files


def _generated_configs(kind, config) -> dict[str, str]:
  from showo2_jax.models import config as model_config  # pylint: disable=import-outside-toplevel
  if kind == "wan_vae":
    return {"config.json": sources.vae_config_json(config)}
  if kind == "showo2":
    top, llm, sig = config.to_original_json()
    return {"config.json": json.dumps(top, indent=2), "llm_config.json": json.dumps(llm, indent=2),
            "siglip_config.json": json.dumps(sig, indent=2)}
  if kind == "qwen2":
    return {"config.json": json.dumps(model_config.Showo2Config(llm=config).to_original_json()[1], indent=2)}
  return {"config.json": json.dumps(model_config.Showo2Config(siglip=config).to_original_json()[2], indent=2)}
