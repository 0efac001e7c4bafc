"""Tensor-by-tensor comparison of a PyTorch-side checkpoint with an Orbax one.

Every tensor of the plan is mapped to its PyTorch layout and compared bit for
bit with the source. When the conversion cast (`--dtype`) or resized the vocab,
the source is cast/sliced the same way first, so "exact" still means the stored
values are exactly what the conversion should have produced. Keys the kind
drops by design (SigLIP's last layer, ...) are counted, not flagged.
"""
from __future__ import annotations

import collections
import dataclasses
import numpy as np

from showo2_jax import param_mapping
from showo2_jax.convert import checkpoint_io, hf, orbax_io, pipeline, sources
from showo2_jax.convert import plan as plan_lib


@dataclasses.dataclass
class Report:
  kind: str
  torch_path: str
  orbax_path: str
  compared: int = 0
  exact: int = 0
  differing: list = dataclasses.field(default_factory=list)        # (key, max |diff|)
  casts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  missing: list = dataclasses.field(default_factory=list)          # in the plan, not in torch
  unexpected: list = dataclasses.field(default_factory=list)       # in torch, not in the plan
  wrong_shape: list = dataclasses.field(default_factory=list)
  ignored: int = 0
  tied_copies: list = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.differing or self.missing or self.unexpected or self.wrong_shape)

  def format(self) -> str:
    lines = [f"verify {self.kind}: torch={self.torch_path}", f"              orbax={self.orbax_path}",
             f"  tensors compared: {self.compared}, bit-exact: {self.exact}, "
             f"differing: {len(self.differing)}"]
    for (src, dst), n in sorted(self.casts.items()):
      lines.append(f"  {n} tensor(s) stored as {dst} from {src} (compared after the same cast)")
    if self.tied_copies:
      lines.append(f"  tied copies checked against the embedding: {', '.join(self.tied_copies)}")
    if self.ignored:
      lines.append(f"  {self.ignored} source tensor(s) not part of Show-o2 (dropped by design)")
    for title, items in (("missing in the PyTorch checkpoint", self.missing),
                         ("unexpected in the PyTorch checkpoint", self.unexpected),
                         ("wrong shape", self.wrong_shape),
                         ("differing (max |diff|)", [f"{k} {d:.3g}" for k, d in self.differing])):
      if items:
        shown = ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")
        lines.append(f"  {title} ({len(items)}): {shown}")
    lines.append("OK: every tensor matches bit for bit" if self.ok else "MISMATCH")
    return "\n".join(lines)


def _bit_equal(a: np.ndarray, b: np.ndarray, block: int = 1 << 24) -> bool:
  """Bitwise equality (NaN payloads and -0.0 included), a block at a time so a
  large tensor costs no full-size temporary."""
  a, b = a.reshape(-1), b.reshape(-1)
  view = np.dtype(f"u{a.dtype.itemsize}")
  for i in range(0, a.size, block):
    if not np.array_equal(a[i:i + block].view(view), b[i:i + block].view(view)):
      return False
  return True


def _compare(report: Report, key: str, src: np.ndarray, stored: np.ndarray) -> None:
  report.compared += 1
  src, stored = np.ascontiguousarray(src), np.ascontiguousarray(stored)
  if src.shape != stored.shape:
    report.wrong_shape.append(f"{key} {src.shape} (stored {stored.shape})")
    return
  if src.dtype != stored.dtype:
    report.casts[(src.dtype.name, stored.dtype.name)] += 1
    src = src.astype(stored.dtype)
  if _bit_equal(src, stored):
    report.exact += 1
    return
  diff = np.max(np.abs(src.astype(np.float64) - stored.astype(np.float64))) if src.size else 0.0
  report.differing.append((key, float(diff)))


def verify(torch_path: str, orbax_dir: str, *,
           chunk_bytes: int = orbax_io.DEFAULT_CHUNK_BYTES) -> Report:
  """Compares every tensor; problems are collected in the report, not raised."""
  meta = orbax_io.read_meta(orbax_dir)
  kind, record = meta["kind"], meta.get("source") or {}
  report = Report(kind, torch_path, orbax_dir)
  config = orbax_io.config_from_dict(kind, meta["config"])
  with checkpoint_io.StateDict(torch_path) as sd:
    if kind == "wan_vae":
      _verify_vae(report, sd, orbax_dir, config)
      return report
    # The torch side may use either SigLIP prefix, and may hold the full vocab.
    prefix = hf.siglip_prefix(sd.keys()) if kind == "siglip" else ""
    plan = plan_lib.build(kind, config, scan_layers=bool(meta.get("scan_layers")), key_prefix=prefix,
                          resize_vocab=record.get("resize_vocab"))
    stored = orbax_io.stored_leaves(orbax_dir)
    pipeline.check_stored(plan, stored, orbax_dir)
    m = param_mapping.match(plan, sd)
    report.missing, report.unexpected, report.wrong_shape = m.missing, m.unexpected, m.wrong_shape
    report.ignored, report.tied_copies = len(m.ignored), m.tied_copies
    keys = pipeline.leaf_major(plan, list(m.source_key) + m.tied_copies)
    reader = pipeline.LeafReader(orbax_dir, stored, [plan.entry(k).leaf for k in keys], chunk_bytes)
    for key in keys:
      entry = plan.entry(key)
      src_key = key if key in m.tied_copies else m.source_key[key]
      src = sd[src_key]
      if entry.rows is not None:
        src = src[:entry.rows]
      _compare(report, key, src, param_mapping.to_torch(reader.take(entry.leaf), entry))
      sd.release(src_key)
  return report


def _verify_vae(report: Report, sd, orbax_dir: str, config) -> None:
  _, _, params = orbax_io.restore_params(orbax_dir)
  ours = sources.vae_to_torch(params, config, sources.vae_layout(sd.keys()))
  keys = set(sd.keys())
  report.missing = sorted(set(ours) - keys)
  report.unexpected = sorted(keys - set(ours))
  for k in ours:
    if k in keys:
      _compare(report, k, sd[k], ours[k])
