"""Which PyTorch tensor becomes which slice of which stored Flax leaf.

A `Plan` lists, for one checkpoint kind and config, every PyTorch-side tensor
(`Entry`: key, torch shape, layout transform) and where it lives in our tree
(leaf path, and layer index when decoder layers are stacked for `nn.scan`).
Converters walk it leaf by leaf (to Orbax) or key by key (to PyTorch), so they
touch one tensor at a time; `match` checks a source checkpoint against it and
reports every missing, unexpected and wrong-shape key at once.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Callable, Optional

import numpy as np

from showo2_jax.convert import hf, showo2_keys
from showo2_jax.models import config as model_config

log = logging.getLogger(__name__)

# HF Qwen2 and Show-o2 names of a tied LM head: a copy of the embedding.
TIED = {"showo2": ("showo.lm_head.weight", "showo.model.embed_tokens.weight"),
        "qwen2": ("lm_head.weight", "model.embed_tokens.weight")}


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str                   # PyTorch key, in the checkpoint's own naming
  leaf: str                  # Flax leaf path in the stored tree ('/'-joined)
  layer: Optional[int]       # index on the leaf's leading axis when layers are stacked
  layout: str                # showo2_keys layout: linear | conv2d | copy
  shape: tuple               # PyTorch-side shape
  rows: Optional[int] = None  # vocab resize: keep the first `rows` rows of the source


@dataclasses.dataclass
class Plan:
  kind: str
  entries: list[Entry]
  leaves: dict[str, tuple]                   # stored leaf -> full Flax shape
  aliases: dict[str, str]                    # tied copy key -> key it copies
  write_aliases: bool                        # does this format store the tied copy?
  ignore: Callable[[str], bool] = lambda key: False
  key_prefix: str = ""

  def __post_init__(self):
    self.by_key = {e.key: e for e in self.entries}

  def by_leaf(self) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in self.entries:
      out.setdefault(e.leaf, []).append(e)
    for es in out.values():
      es.sort(key=lambda e: -1 if e.layer is None else e.layer)
    return out

  def entry(self, key: str) -> Entry:
    """The entry producing `key` (a tied copy resolves to its source)."""
    return self.by_key[self.aliases.get(key, key)]

  def default_keys(self) -> list[str]:
    keys = [e.key for e in self.entries]
    if self.write_aliases:
      keys += [a for a, k in self.aliases.items() if k in self.by_key]
    return sorted(keys, key=natural_key)


def natural_key(key: str):
  """Sorts 'layers.10' after 'layers.9', so shards hold whole layers in order."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


def _entries(shapes: dict[str, tuple], key_fn, rows: Optional[dict] = None) -> list[Entry]:
  out = []
  for path, shape in shapes.items():
    m = re.match(r"^(.*?)/layers/(.*)$", path)
    parts = ([(f"{m.group(1)}/layers_{i}/{m.group(2)}", i, tuple(shape[1:])) for i in range(shape[0])]
             if m else [(path, None, tuple(shape))])
    for unrolled, layer, flax_shape in parts:
      key, layout = key_fn(unrolled)
      out.append(Entry(key, path, layer, layout, showo2_keys.torch_shape(flax_shape, layout),
                       (rows or {}).get(key)))
  return sorted(out, key=lambda e: natural_key(e.key))


@functools.lru_cache(maxsize=8)
def _model_shapes(config: model_config.Showo2Config) -> dict[str, tuple]:
  """Flat param shapes of the model (an abstract trace: ~1 s, hence the cache)."""
  from showo2_jax.convert import showo2_torch  # pylint: disable=import-outside-toplevel
  return dict(showo2_torch.expected_shapes(config))


def build(kind: str, config, *, scan_layers: bool = False, key_prefix: str = "",
          resize_vocab: Optional[int] = None) -> Plan:
  """The plan of `kind` ('showo2' | 'qwen2' | 'siglip') for its typed `config`."""
  if kind == "showo2":
    shapes = dict(_model_shapes(config.replace(scan_layers=scan_layers)))
    entries = _entries(shapes, showo2_keys.torch_key)
  elif kind == "qwen2":
    full = model_config.Showo2Config(llm=config, scan_layers=scan_layers)
    shapes = {k: v for k, v in _model_shapes(full).items() if k.startswith("showo/")}
    rows = None
    if resize_vocab is not None:
      rows = {"model.embed_tokens.weight": config.vocab_size, "lm_head.weight": config.vocab_size}
    entries = _entries(shapes, hf.qwen2_key, rows)
  elif kind == "siglip":
    full = model_config.Showo2Config(siglip=config, scan_layers=scan_layers)
    shapes = {k: v for k, v in _model_shapes(full).items()
              if k.startswith(("und_trans/", "position_embedding/"))}
    entries = _entries(shapes, lambda p: hf.siglip_key(p, key_prefix))
  else:
    raise ValueError(f"no tensor plan for kind '{kind}'")
  aliases = {}
  if kind in TIED:
    alias, target = TIED[kind]
    if alias not in {e.key for e in entries} and target in {e.key for e in entries}:
      aliases[alias] = target
  ignore = {
      "qwen2": hf.qwen2_ignored,
      "siglip": lambda k: hf.siglip_ignored(k, key_prefix, config.num_layers),
  }.get(kind, lambda k: False)
  return Plan(kind, entries, shapes, aliases, write_aliases=(kind == "showo2"), ignore=ignore,
              key_prefix=key_prefix)


# ---------------------------------------------------------------- source checks
@dataclasses.dataclass
class Match:
  source_key: dict[str, str]        # entry key -> key to read in the source
  missing: list[str]
  unexpected: list[str]
  wrong_shape: list[str]
  ignored: list[str]
  tied_copies: list[str]            # alias keys present in the source

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.wrong_shape)

  def raise_if_bad(self, source: str) -> None:
    if not self.ok:
      raise showo2_keys.KeyMismatchError(self.missing, self.unexpected, self.wrong_shape, source)


def match(plan: Plan, state_dict) -> Match:
  """Lines a (lazy) state_dict up with the plan; reads shapes only."""
  keys = list(state_dict.keys())
  present = set(keys)
  src, missing, wrong, named = {}, [], [], set()
  reverse_alias = {t: a for a, t in plan.aliases.items()}
  for e in plan.entries:
    key = e.key if e.key in present else reverse_alias.get(e.key)
    if key not in present:
      missing.append(e.key)
      continue
    named.add(key)
    got = tuple(state_dict.shape(key))
    want = e.shape
    if e.rows is not None:
      ok = len(got) == len(want) and got[1:] == want[1:] and got[0] >= e.rows
      want = (">=",) + want
    else:
      ok = got == want
    if not ok:
      wrong.append(f"{key} {got} (expected {want})")
      continue
    src[e.key] = key
  used = named
  tied = [a for a in plan.aliases if a in present and a not in used]
  ignored = [k for k in keys if k not in used and k not in tied and plan.ignore(k)]
  unexpected = [k for k in keys if k not in used and k not in tied and not plan.ignore(k)]
  return Match(src, sorted(missing, key=natural_key), sorted(unexpected, key=natural_key), wrong,
               ignored, tied)


def read_flax(state_dict, key: str, entry: Entry, dtype=None) -> np.ndarray:
  """One source tensor in Flax layout (a fresh array), then its pages are let go."""
  x = state_dict[key]
  if entry.rows is not None:
    x = x[:entry.rows]
  y = showo2_keys.to_flax_layout(x, entry.layout)
  if dtype is not None and y.dtype != np.dtype(dtype):
    y = y.astype(dtype)
  del x
  if hasattr(state_dict, "release"):
    state_dict.release(key)
  return y


def to_torch(leaf_value: np.ndarray, entry: Entry) -> np.ndarray:
  """The PyTorch tensor of `entry` from its (stored) Flax leaf."""
  x = leaf_value[entry.layer] if entry.layer is not None else leaf_value
  return np.ascontiguousarray(showo2_keys.to_torch_layout(np.asarray(x), entry.layout))
