"""PyTorch <-> Flax parameter mapping: per-key layout hooks, entries, one matcher.

Every conversion between a PyTorch state_dict and a Flax param tree in this
package walks a list of `Entry`s, each naming one PyTorch tensor (key, shape), the
Flax leaf it lives in (and its layer on a stacked leaf's leading axis) and the
`Hook` that changes its layout, used in both directions (as MaxText's
`param_mapping.py`). The tables that produce entries:

  Show-o2, HF Qwen2, HF SigLIP   `convert/showo2_keys.RULES` (regex rules), `convert/plan.build`
  Wan2.1 VAE                     `vae/loading.param_table` (original and diffusers names)

`match` checks a (lazy) state_dict against entries without reading tensors and
reports every missing, unexpected and wrong-shape key at once; `read_flax` and
`to_torch` convert one tensor at a time. Transforms are exact (transposes and
reshapes only).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable, Mapping, Optional

import numpy as np

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ hooks
@dataclasses.dataclass(frozen=True)
class Hook:
  """One layout change: `to_flax(torch array)`, `to_torch(flax array, torch shape)`,
  `torch_shape(flax shape)` (None where the Flax shape does not determine it)."""
  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray, tuple], np.ndarray]
  torch_shape: Optional[Callable[[tuple], tuple]] = None


def _conv_to_torch(x, shape):
  del shape
  n = x.ndim - 2
  return np.transpose(x, (n + 1, n) + tuple(range(n)))


HOOKS: dict[str, Hook] = {h.name: h for h in (
    # biases, norm scales, embeddings: same layout
    Hook("copy", lambda x: x, lambda x, shape: x, tuple),
    # torch Linear (out, in) <-> flax Dense kernel (in, out)
    Hook("linear", lambda x: x.T, lambda x, shape: x.T, lambda s: tuple(reversed(s))),
    # torch Conv{1,2,3}d (O, I, *k) <-> flax Conv kernel (*k, I, O)
    Hook("conv", lambda x: np.transpose(x, tuple(range(2, x.ndim)) + (1, 0)), _conv_to_torch,
         lambda s: (s[-1], s[-2]) + tuple(s[:-2])),
    # a torch 1x1 Conv2d (O, I, 1, 1) used as a Dense (in, out) (the Wan VAE's attention)
    Hook("conv1x1_dense", lambda x: x[:, :, 0, 0].T, lambda x, shape: x.T[:, :, None, None],
         lambda s: (s[1], s[0], 1, 1)),
    # an RMS_norm gamma (C, 1, 1[, 1]) <-> (C,): the torch shape is the entry's
    Hook("gamma", lambda x: x.reshape(-1), lambda x, shape: x.reshape(shape)),
)}


def to_flax_layout(arr, hook: str) -> np.ndarray:
  """A PyTorch-layout tensor in Flax layout: a new C-ordered array (never a view of
  a memory-mapped file)."""
  return np.array(HOOKS[hook].to_flax(np.asarray(arr)), order="C")


def to_torch_layout(arr, hook: str, torch_shape: Optional[tuple] = None) -> np.ndarray:
  """A Flax-layout tensor in PyTorch layout (contiguous)."""
  return np.ascontiguousarray(HOOKS[hook].to_torch(np.asarray(arr), torch_shape))


def torch_shape(flax_shape: tuple, hook: str) -> tuple:
  fn = HOOKS[hook].torch_shape
  if fn is None:
    raise ValueError(f"hook {hook!r}: the torch shape is not determined by the Flax shape")
  return fn(tuple(flax_shape))


def flax_shape(torch_shape_: tuple, hook: str) -> tuple:
  return HOOKS[hook].to_flax(np.empty(torch_shape_, np.uint8)).shape


# ------------------------------------------------------- flat trees and scanning
def flatten(tree: Mapping, prefix: str = "") -> dict:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def leaf_shapes(tree: Mapping) -> dict[str, tuple]:
  """Flat {path: shape} of a param tree of arrays or ShapeDtypeStructs; a Flax
  logical-partitioning box is read through its `.value` (no sharding constraint, so
  this works under a mesh)."""
  return {k: tuple(getattr(v, "value", v).shape) for k, v in flatten(tree).items()}


def unflatten(flat: Mapping[str, object]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


_STACKED = re.compile(r"^(.*?)/layers/(.*)$")


def unroll_flat(flat: Mapping[str, object], take: Callable = lambda a, i: a[i]) -> dict:
  """Stacked 'x/layers/rest' (leading layer axis, `nn.scan`) -> 'x/layers_{i}/rest'."""
  out = {}
  for path, v in flat.items():
    m = _STACKED.match(path)
    if m:
      for i in range(v.shape[0]):
        out[f"{m.group(1)}/layers_{i}/{m.group(2)}"] = take(v, i)
    else:
      out[path] = v
  return out


def natural_key(key: str):
  """Sorts 'layers.10' after 'layers.9', so shards hold whole layers in order."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


# ---------------------------------------------------------------------- entries
@dataclasses.dataclass(frozen=True)
class Entry:
  key: str                   # PyTorch key, in the checkpoint's own naming
  leaf: str                  # Flax leaf path in the stored tree ('/'-joined)
  layer: Optional[int]       # index on the leaf's leading axis when layers are stacked
  layout: str                # the `HOOKS` name
  shape: tuple               # PyTorch-side shape
  rows: Optional[int] = None  # vocab resize: keep the first `rows` rows of the source


def entries(shapes: Mapping[str, tuple], key_fn: Callable[[str], tuple[str, str]],
            rows: Optional[dict] = None) -> list[Entry]:
  """Entries of a flat {Flax path: shape} tree (scanned or unrolled); `key_fn` maps an
  unrolled path ('.../layers_3/...') to (PyTorch key, hook name)."""
  out = []
  for path, shape in shapes.items():
    m = _STACKED.match(path)
    parts = ([(f"{m.group(1)}/layers_{i}/{m.group(2)}", i, tuple(shape[1:])) for i in range(shape[0])]
             if m else [(path, None, tuple(shape))])
    for unrolled, layer, fshape in parts:
      key, layout = key_fn(unrolled)
      out.append(Entry(key, path, layer, layout, torch_shape(fshape, layout), (rows or {}).get(key)))
  return sorted(out, key=lambda e: natural_key(e.key))


class KeyMismatchError(KeyError):
  """Missing / unexpected / wrong-shape keys between a state_dict and our params."""

  def __init__(self, missing=(), unexpected=(), wrong_shape=(), source=""):
    self.missing, self.unexpected, self.wrong_shape = list(missing), list(unexpected), list(wrong_shape)
    parts = [f"checkpoint {source} does not match the model config:" if source else
             "state_dict does not match the model config:"]
    for title, items in (("missing", self.missing), ("unexpected", self.unexpected),
                         ("wrong shape", self.wrong_shape)):
      if items:
        shown = ", ".join(str(i) for i in items[:20])
        more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
        parts.append(f"  {title} ({len(items)}): {shown}{more}")
    super().__init__("\n".join(parts))

  def __str__(self):
    return self.args[0]


@dataclasses.dataclass
class Plan:
  """The entries of one checkpoint kind and config, with its tied copies."""
  kind: str
  entries: list[Entry]
  leaves: dict[str, tuple]                   # stored leaf -> full Flax shape
  aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # tied copy -> key it copies
  write_aliases: bool = False                # does this format store the tied copy?
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
      raise KeyMismatchError(self.missing, self.unexpected, self.wrong_shape, source)


def _shape(state_dict, key) -> tuple:
  return tuple(state_dict.shape(key) if hasattr(state_dict, "shape") else np.shape(state_dict[key]))


def _describe(key: str, got: tuple, want: tuple) -> str:
  return f"{key} {got} (expected {want})"


def match(plan: Plan, state_dict, describe: Callable[[str, tuple, tuple], str] = _describe) -> Match:
  """Lines a (lazy) state_dict up with the plan; reads shapes only. `describe(key,
  got, want)` words a wrong shape."""
  keys = list(state_dict.keys())
  present = set(keys)
  src, missing, wrong, used = {}, [], [], set()
  reverse_alias = {t: a for a, t in plan.aliases.items()}
  for e in plan.entries:
    key = e.key if e.key in present else reverse_alias.get(e.key)
    if key not in present:
      missing.append(e.key)
      continue
    used.add(key)
    got, want = _shape(state_dict, key), e.shape
    if e.rows is not None:
      ok = len(got) == len(want) and got[1:] == want[1:] and got[0] >= e.rows
      want = (">=",) + want
    else:
      ok = got == want
    if not ok:
      wrong.append(describe(key, got, want))
      continue
    src[e.key] = key
  tied = [a for a in plan.aliases if a in present and a not in used]
  ignored = [k for k in keys if k not in used and k not in tied and plan.ignore(k)]
  unexpected = [k for k in keys if k not in used and k not in tied and not plan.ignore(k)]
  return Match(src, sorted(missing, key=natural_key), sorted(unexpected, key=natural_key), wrong,
               ignored, tied)


def warn_untied_copies(state_dict, plan: Plan, m: Match, source: str = "") -> None:
  """A tied copy (e.g. lm_head.weight) is not read; warn if it was not a copy."""
  for alias in m.tied_copies:
    target = m.source_key.get(plan.aliases[alias])
    if target is None:
      continue
    a, b = np.asarray(state_dict[alias]), np.asarray(state_dict[target])
    if not (a.shape == b.shape and np.array_equal(a, b)):
      log.warning("%s%s differs from %s, but the embeddings are tied (tie_word_embeddings): "
                  "the model uses %s and ignores %s", f"{source}: " if source else "", alias,
                  target, target, alias)
    if hasattr(state_dict, "release"):
      state_dict.release(alias)


def read_flax(state_dict, key: str, entry: Entry, dtype=None) -> np.ndarray:
  """One source tensor in Flax layout (a fresh array), then its pages are let go."""
  x = state_dict[key]
  if entry.rows is not None:
    x = x[:entry.rows]
  y = to_flax_layout(x, entry.layout)
  if dtype is not None and y.dtype != np.dtype(dtype):
    y = y.astype(dtype)
  del x
  if hasattr(state_dict, "release"):
    state_dict.release(key)
  return y


def to_torch(leaf_value: np.ndarray, entry: Entry) -> np.ndarray:
  """The PyTorch tensor of `entry` from its (stored) Flax leaf."""
  x = leaf_value[entry.layer] if entry.layer is not None else leaf_value
  return to_torch_layout(x, entry.layout, entry.shape)


def read_params(state_dict, plan: Plan, m: Match, dtype=None) -> dict:
  """The matched state_dict as a flat {stored leaf: Flax array}; stacked leaves are
  assembled layer by layer. Reads one tensor at a time."""
  flat, stacks = {}, {}
  for e in plan.entries:
    if e.key not in m.source_key:
      continue
    arr = read_flax(state_dict, m.source_key[e.key], e, dtype)
    if e.layer is None:
      flat[e.leaf] = arr
    else:
      stacks.setdefault(e.leaf, {})[e.layer] = arr
  for leaf, per_layer in stacks.items():
    flat[leaf] = np.stack([per_layer[i] for i in range(len(per_layer))])
  return flat
