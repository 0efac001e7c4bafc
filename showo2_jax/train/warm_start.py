"""Where the params of a new run come from: `init.sources`, applied in order.

A run that does not resume starts from random params, then each entry of
`config.init.sources` overwrites the params it selects; a later entry overrides
an earlier one. An entry is a string `KIND:PATH` or `KIND:PATH#PATTERNS`
(PATTERNS: `|`-separated substrings of param paths, as `train.frozen`; a
leading `-` excludes), or a tuple `(KIND, PATH[, PATTERNS])`:

  qwen2       a Hugging Face Qwen2/Qwen2.5 directory (config.json + safetensors/bin)
              -> `showo/*`; embedding/lm_head rows beyond the model's vocabulary
              are dropped (the original's `resize_token_embeddings`), a tied
              checkpoint fills an untied lm_head from the embedding
  siglip      a Hugging Face SigLIP (vision or full) directory -> `und_trans/*`
              (its layers but the last) and `position_embedding`; the pixel
              patch embedding, last layer, post-layernorm and head are unused
  semantic    the released `pre-distilled_semantic_layers.pt` (or .safetensors;
              Show-o2 key names, spec 9.1) or a `distill_semantic` run
              -> `image_embedder_und`, `position_embedding`, `und_trans`
  original    an original Show-o2 model directory (spec 9.1) -> every param
  orbax       params converted by `showo2-jax convert` (any kind) -> what it holds
  checkpoint  a previous run of ours (workdir, checkpoints dir or step dir):
              params only (optimizer state, step and data position stay behind)

Every param must be accounted for: a param that no source selects must match
`init.fresh` (substrings: the layers this stage trains from scratch), else the
run stops with the list. A selected param that the source lacks, a shape
mismatch, a pattern matching no param, a key of the source that maps to no
param: each is an error naming the source. At start a table shows which source
each param group came from.

The older single-source fields remain as shorthands, turned into sources in
this order: `from_checkpoint` | `from_orbax` | `from_original` (first non-empty;
`exclude` = patterns kept fresh), then `semantic_layers_from` (a `semantic`
source).

Paper recipes (spec 7.2): stage 1 = `qwen2:<Qwen2.5-1.5B-Instruct>` +
`semantic:<pre-distilled_semantic_layers.pt>`, the generation side fresh. The
1.5B -> 7B transfer (stage1_7b:a) = `qwen2:<Qwen2.5-7B-Instruct>` + the final
1.5B model's (after stage 2c, as train_showo2_7b_stage1.sh) flow head, time
embedder and semantic layers
(`checkpoint:<run>#-showo|-image_embedder_gen|-fusion_proj|-diff_proj|-time_embed_proj`);
the LLM-width layers (image_embedder_gen, fusion_proj, diff_proj,
time_embed_proj) start fresh.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import traverse_util

from showo2_jax import param_mapping, paths
from showo2_jax.convert import orbax_io
from showo2_jax.models import config as model_config
from showo2_jax.models.config import Showo2Config
from showo2_jax.train import partition

log = logging.getLogger(__name__)

KINDS = ("qwen2", "siglip", "semantic", "original", "orbax", "checkpoint")
SEMANTIC_PREFIXES = ("image_embedder_und", "position_embedding", "und_trans")
# Top-level param groups each kind can provide (None: the whole model).
DOMAIN = {**model_config.KIND_SUBTREES, "semantic": SEMANTIC_PREFIXES}
FRESH = "random init"


class InitError(ValueError):
  """`init` asks for something the sources cannot give (the message names the source)."""


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str
  path: str
  patterns: tuple = ()

  @property
  def label(self) -> str:
    return f"{self.kind}:{self.path}" + (f"#{'|'.join(self.patterns)}" if self.patterns else "")


def parse_source(entry) -> Source:
  """`KIND:PATH[#PAT|PAT]`, `(KIND, PATH[, PATTERNS])` or a mapping -> Source."""
  if isinstance(entry, Mapping):
    kind, path, patterns = entry.get("kind", ""), entry.get("path", ""), entry.get("params", ())
  elif isinstance(entry, (tuple, list)):
    if len(entry) not in (2, 3):
      raise InitError(f"init.sources entry {entry!r}: expected (kind, path[, patterns])")
    kind, path = entry[0], entry[1]
    patterns = entry[2] if len(entry) == 3 else ()
  elif isinstance(entry, str):
    kind, sep, rest = entry.partition(":")
    if not sep:
      raise InitError(f"init.sources entry {entry!r}: expected KIND:PATH (kinds: {', '.join(KINDS)})")
    path, _, pats = rest.partition("#")
    patterns = tuple(p for p in pats.split("|") if p) if pats else ()
  else:
    raise InitError(f"init.sources entry {entry!r}: expected a string KIND:PATH or a tuple")
  if isinstance(patterns, str):
    patterns = tuple(p for p in re.split(r"[|,]", patterns) if p)
  kind = str(kind).strip()
  if kind not in KINDS:
    raise InitError(f"init.sources entry {entry!r}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
  if not str(path).strip():
    raise InitError(f"init.sources entry {entry!r}: empty path")
  return Source(kind, str(path).strip(), tuple(str(p) for p in patterns))


def sources_from_config(init_config) -> tuple[list[Source], tuple]:
  """(ordered sources, fresh patterns) of an `init` block, shorthands included."""
  get = init_config.get
  out = [parse_source(e) for e in (get("sources", ()) or ())]
  fresh = tuple(get("fresh", ()) or ())
  exclude = tuple(get("exclude", ()) or ())
  legacy = []
  for field, kind in (("from_checkpoint", "checkpoint"), ("from_orbax", "orbax"),
                      ("from_original", "original")):
    if get(field, ""):
      legacy.append(Source(kind, get(field), tuple("-" + e for e in exclude)))
      break
  if get("semantic_layers_from", ""):
    legacy.append(Source("semantic", get("semantic_layers_from")))
  if legacy and out:
    raise InitError("init: use either init.sources or the single-source fields (from_checkpoint, "
                    "from_orbax, from_original, semantic_layers_from), not both")
  if legacy:
    out = legacy
    fresh = fresh + exclude
  return out, fresh


def selects(name: str, patterns: Sequence[str]) -> bool:
  include = [p for p in patterns if not p.startswith("-")]
  exclude = [p[1:] for p in patterns if p.startswith("-")]
  if include and not any(p in name for p in include):
    return False
  return not any(p in name for p in exclude)


def check_patterns(patterns: Iterable[str], names: Sequence[str], where: str) -> None:
  """Every pattern (leading '-' stripped) matches some param name, else InitError."""
  dead = [p for p in patterns if not any(p.lstrip("-") in n for n in names)]
  if dead:
    raise InitError(f"{where}: pattern(s) {dead} match no parameter of the model "
                    f"(top-level groups: {sorted({n.split('/')[0] for n in names})})")


# ---------------------------------------------------------------------- readers
_STACKED = re.compile(r"^(.*?)/layers/(.*)$")


def _unrolled(name: str, shape: tuple) -> list[tuple[str, Optional[int]]]:
  """A model leaf -> its per-layer paths (scanned stacks) or itself."""
  m = _STACKED.match(name)
  if not m:
    return [(name, None)]
  return [(f"{m.group(1)}/layers_{i}/{m.group(2)}", i) for i in range(shape[0])]


class _TorchReader:
  """A PyTorch-side state_dict (HF or original key names), read one tensor at a time."""

  def __init__(self, source: Source, model_config: Showo2Config):
    from showo2_jax.convert import checkpoint_io, hf, showo2_keys  # pylint: disable=import-outside-toplevel
    self.keys_lib = showo2_keys
    path = source.path
    if source.kind in ("qwen2", "siglip") and not paths.isdir(path):
      raise InitError(f"{source.label}: not a directory (expected a Hugging Face model directory)")
    self._local = contextlib.ExitStack()   # the weights are memory-mapped: gs:// is copied first
    try:
      self.sd = checkpoint_io.StateDict(self._local.enter_context(paths.local_copy(path)))
    except (checkpoint_io.CheckpointFormatError, FileNotFoundError, OSError) as e:
      self._local.close()
      raise InitError(f"{source.label}: {e}") from None
    keys = set(self.sd.keys())
    self.rows = {}
    self.aliases = {}
    if source.kind == "qwen2":
      self.key_fn = lambda p: hf.qwen2_key(p)[0]
      self.ignore = hf.qwen2_ignored
      vocab = model_config.llm.vocab_size
      self.rows = {"model.embed_tokens.weight": vocab, "lm_head.weight": vocab}
      if "lm_head.weight" not in keys:          # tied checkpoint, untied model (HF semantics)
        self.aliases["lm_head.weight"] = "model.embed_tokens.weight"
      if model_config.llm.tie_word_embeddings:  # the model has no lm_head: a tied copy is unused
        self.ignore = lambda k: hf.qwen2_ignored(k) or k == "lm_head.weight"
    elif source.kind == "siglip":
      try:
        prefix = hf.siglip_prefix(keys)
      except checkpoint_io.CheckpointFormatError as e:
        raise InitError(f"{source.label}: {e}") from None
      self.key_fn = lambda p: hf.siglip_key(p, prefix)[0]
      self.ignore = lambda k: hf.siglip_ignored(k, prefix, model_config.siglip.num_layers)
    else:  # semantic / original: Show-o2 key names
      self.key_fn = lambda p: showo2_keys.torch_key(p)[0]
      tied = model_config.llm.tie_word_embeddings
      self.ignore = lambda k: tied and k == "showo.lm_head.weight"
      if source.kind == "original" and "showo.model.embed_tokens.weight" not in keys:
        self.aliases["showo.model.embed_tokens.weight"] = "showo.lm_head.weight"
    self.available = keys

  def key(self, unrolled: str) -> Optional[str]:
    k = self.key_fn(unrolled)
    k = self.aliases.get(k, k) if k not in self.available else k
    return k if k in self.available else None

  def shape(self, unrolled: str, key: str, want: tuple) -> Optional[str]:
    """None if the tensor fits `want` (flax layout), else a description."""
    _, layout = self.keys_lib.torch_key(unrolled)
    got = tuple(self.sd.shape(key))
    torch_want = param_mapping.torch_shape(want, layout)
    rows = self.rows.get(self.key_fn(unrolled))
    if rows is not None and len(got) == 2 and got[1:] == torch_want[1:] and got[0] >= rows:
      return None
    return None if got == torch_want else f"{key} {got} (expected {torch_want})"

  def read(self, unrolled: str, key: str) -> np.ndarray:
    _, layout = self.keys_lib.torch_key(unrolled)
    x = np.asarray(self.sd[key])
    rows = self.rows.get(self.key_fn(unrolled))
    if rows is not None:
      x = x[:rows]
    y = param_mapping.to_flax_layout(x, layout)
    if hasattr(self.sd, "release"):
      self.sd.release(key)
    return y

  def unused(self, used: set) -> list[str]:
    return sorted(k for k in self.available if k not in used and not self.ignore(k))

  def close(self):
    self.sd.close()
    self._local.close()


class _FlatReader:
  """Params as a flat {unrolled path: host array} (Orbax conversions)."""

  def __init__(self, source: Source):
    try:
      _, _, host = orbax_io.restore_params(source.path)
    except (FileNotFoundError, ValueError, OSError) as e:
      raise InitError(f"{source.label}: cannot read converted params ({e})") from None
    host = host.get("params", host) if isinstance(host, dict) else host
    self.flat = param_mapping.unroll_flat(param_mapping.flatten(host))
    self.available = set(self.flat)

  def key(self, unrolled):
    return unrolled if unrolled in self.available else None

  def shape(self, unrolled, key, want):
    got = tuple(np.shape(self.flat[key]))
    return None if got == tuple(want) else f"{key} {got} (expected {tuple(want)})"

  def read(self, unrolled, key):
    return np.asarray(self.flat[key])

  def unused(self, used):
    return sorted(k for k in self.available if k not in used)

  def close(self):
    self.flat = {}


def _checkpoint_dir(path: str) -> bool:
  try:
    orbax_io.find_step_dir(path)
    return True
  except (FileNotFoundError, OSError):
    return False


# ------------------------------------------------------------------------ plan
@dataclasses.dataclass
class Assignment:
  """Which source (index into `sources`, or None = fresh) gives each param."""
  sources: list[Source]
  owner: dict            # flat path tuple -> source index or None
  sizes: dict            # flat path tuple -> number of elements

  def table(self) -> str:
    """One row per (top-level group, source): arrays, params, source."""
    rows: dict = {}
    for path, idx in self.owner.items():
      label = FRESH if idx is None else self.sources[idx].label
      key = (path[0], label)
      n, size = rows.get(key, (0, 0))
      rows[key] = (n + 1, size + self.sizes[path])
    width = max([len(g) for g, _ in rows] + [5])
    lines = [f"{'group':<{width}}  {'arrays':>6}  {'params':>10}  source"]
    for (group, label), (n, size) in sorted(rows.items()):
      lines.append(f"{group:<{width}}  {n:>6}  {size:>10,}  {label}")
    return "\n".join(lines)


def _fits_checkpoint(source: Source, flat_abstract: dict) -> dict:
  """{path tuple: problem or None} for a run checkpoint, from its metadata only."""
  stored = orbax_io.run_params_shapes(source.path)
  out = {}
  for path, a in flat_abstract.items():
    if path not in stored:
      out[path] = "missing"
    elif stored[path] != tuple(a.shape):
      out[path] = f"{partition.path_name(path)} {stored[path]} (expected {tuple(a.shape)})"
    else:
      out[path] = None
  return out


def plan(sources: Sequence[Source], fresh: Sequence[str], flat_abstract: dict,
         model_config: Showo2Config, readers: dict) -> Assignment:
  names = {p: partition.path_name(p) for p in flat_abstract}
  all_names = list(names.values())
  check_patterns(fresh, all_names, "init.fresh")
  owner = {p: None for p in flat_abstract}
  for i, src in enumerate(sources):
    check_patterns(src.patterns, all_names, f"init.sources[{i}] {src.label}")
    domain = DOMAIN.get(src.kind)
    selected = {p: a for p, a in flat_abstract.items()
                if (domain is None or p[0] in domain) and selects(names[p], src.patterns)}
    if not selected:
      raise InitError(f"init.sources[{i}] {src.label}: selects no parameter")
    if src.kind == "checkpoint" or (src.kind == "semantic" and paths.isdir(src.path)
                                    and _checkpoint_dir(src.path)):
      if not _checkpoint_dir(src.path):
        raise InitError(f"{src.label}: no checkpoints under {src.path} (expected a training "
                        f"workdir, its checkpoints dir or a step dir)")
      fits = _fits_checkpoint(src, selected)
      missing = [names[p] for p, f in fits.items() if f == "missing"]
      wrong = [f for f in fits.values() if f not in (None, "missing")]
      readers[i] = None
    else:
      reader = readers[i] = _TorchReader(src, model_config) if src.kind in (
          "qwen2", "siglip", "semantic", "original") else _FlatReader(src)
      missing, wrong, used = [], [], set()
      for p, a in selected.items():
        for unrolled, layer in _unrolled(names[p], a.shape):
          want = tuple(a.shape[1:]) if layer is not None else tuple(a.shape)
          key = reader.key(unrolled)
          if key is None:
            missing.append(unrolled)
            continue
          used.add(key)
          bad = reader.shape(unrolled, key, want)
          if bad:
            wrong.append(bad)
      # Keys of the source that map to no param of the model at all (a wrong file).
      if not src.patterns:
        domain_keys = set()
        for p, a in flat_abstract.items():
          if domain is None or p[0] in domain:
            for unrolled, _ in _unrolled(names[p], a.shape):
              k = reader.key(unrolled)
              if k is not None:
                domain_keys.add(k)
        unexpected = reader.unused(domain_keys)
        if src.kind == "semantic":  # loaded strict=False in the original: other modules pass
          unexpected = [k for k in unexpected if k.startswith(tuple(s + "." for s in SEMANTIC_PREFIXES))]
        if src.kind in ("qwen2", "siglip", "semantic", "original") and unexpected:
          raise InitError(f"{src.label}: {len(unexpected)} tensors map to no parameter of the model, "
                          f"e.g. {unexpected[:6]} (wrong checkpoint, or a model config that does not "
                          f"match it)")
    if missing or wrong:
      parts = []
      if missing:
        parts.append(f"lacks {len(missing)} selected params, e.g. {sorted(missing)[:6]}")
      if wrong:
        parts.append(f"{len(wrong)} wrong shapes, e.g. {wrong[:4]}")
      raise InitError(f"init.sources[{i}] {src.label}: " + "; ".join(parts) +
                      " (narrow it with KIND:PATH#pattern|-pattern, or check the model config)")
    for p in selected:
      owner[p] = i
  if sources:
    stray = sorted(names[p] for p, i in owner.items() if i is None and not selects_any(names[p], fresh))
    if stray:
      raise InitError(f"init: {len(stray)} params come from no source and are not listed in "
                      f"init.fresh, e.g. {stray[:8]}; add a source for them or their pattern to "
                      f"init.fresh (layers this stage trains from scratch)")
  sizes = {p: int(np.prod(a.shape)) for p, a in flat_abstract.items()}
  return Assignment(list(sources), owner, sizes)


def selects_any(name: str, patterns: Sequence[str]) -> bool:
  return any(p in name for p in patterns)


# ------------------------------------------------------------------------ load
def _place_host(value: np.ndarray, abstract) -> jax.Array:
  value = np.asarray(value, dtype=abstract.dtype)
  if value.shape != tuple(abstract.shape):
    raise InitError(f"shape {value.shape} does not match the expected {tuple(abstract.shape)}")
  return jax.make_array_from_callback(value.shape, abstract.sharding, lambda idx: value[idx])


def _read_leaf(reader, name: str, abstract) -> np.ndarray:
  parts = _unrolled(name, abstract.shape)
  if parts[0][1] is None:
    return reader.read(name, reader.key(name))
  leaf = np.empty(tuple(abstract.shape), np.dtype(abstract.dtype))
  for unrolled, layer in parts:
    leaf[layer] = reader.read(unrolled, reader.key(unrolled))
  return leaf


def load(params, init_config, abstract_params, model_config: Showo2Config, *,
         printer: Callable[[str], None] = None):
  """`params` (random, placed) with every param a source selects replaced by its
  value, each placed in its shards; logs the source table. Raises InitError."""
  sources, fresh = sources_from_config(init_config)
  if not sources:
    return params
  flat_abstract = traverse_util.flatten_dict(abstract_params)
  readers: dict = {}
  try:
    assignment = plan(sources, fresh, flat_abstract, model_config, readers)
    (printer or (lambda s: log.info("%s", s)))("init: where each param group comes from\n" +
                                                assignment.table())
    flat = traverse_util.flatten_dict(params)
    for i, src in enumerate(sources):
      mine = {p: flat_abstract[p] for p, o in assignment.owner.items() if o == i}
      if not mine:
        log.warning("init: %s gives no param (later sources override all of it)", src.label)
        continue
      if readers[i] is None:   # a run checkpoint: restored straight into the shards
        loaded = orbax_io.restore_run_params(src.path, traverse_util.unflatten_dict(mine))
        flat.update(traverse_util.flatten_dict(loaded))
      else:
        for p, a in mine.items():
          flat[p] = _place_host(_read_leaf(readers[i], partition.path_name(p), a), a)
      log.info("init: %d param arrays from %s", len(mine), src.label)
  finally:
    for r in readers.values():
      if r is not None:
        r.close()
  return traverse_util.unflatten_dict(flat)


def source_table(init_config, abstract_params, model_config: Showo2Config) -> str:
  """The table `load` prints, without reading any tensor (checks included)."""
  sources, fresh = sources_from_config(init_config)
  readers: dict = {}
  try:
    return plan(sources, fresh, traverse_util.flatten_dict(abstract_params), model_config,
                readers).table()
  finally:
    for r in readers.values():
      if r is not None:
        r.close()
