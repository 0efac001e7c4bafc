"""One mapping table between our Flax param paths and the original's state_dict keys.

Used in both directions (loading released checkpoints, writing PyTorch-loadable
ones). Paths are written in their unrolled form (`layers_{i}`); scanned trees
(stacked on a leading layer axis under `layers`) are unstacked/stacked around it.
Transforms are exact: transposes only, no renormalisation.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Mapping, Optional

import numpy as np

# (flax path regex, torch key template, kind)
#   linear: torch (out, in)   <-> flax kernel (in, out)
#   conv2d: torch (O, I, H, W) <-> flax kernel (H, W, I, O)
#   copy:   same layout (biases, norm scales, embeddings)
RULES = (
    (r"showo/model/embed_tokens/embedding", r"showo.model.embed_tokens.weight", "copy"),
    (r"showo/model/layers_(\d+)/(self_attn|mlp)/(\w+_proj)/kernel", r"showo.model.layers.\1.\2.\3.weight", "linear"),
    (r"showo/model/layers_(\d+)/self_attn/(\w+_proj)/bias", r"showo.model.layers.\1.self_attn.\2.bias", "copy"),
    (r"showo/model/layers_(\d+)/(\w+_layernorm)/scale", r"showo.model.layers.\1.\2.weight", "copy"),
    (r"showo/model/norm/scale", r"showo.model.norm.weight", "copy"),
    (r"showo/lm_head/kernel", r"showo.lm_head.weight", "linear"),
    (r"image_embedder_(und|gen)/proj/kernel", r"image_embedder_\1.proj.weight", "conv2d"),
    (r"image_embedder_(und|gen)/proj/bias", r"image_embedder_\1.proj.bias", "copy"),
    (r"position_embedding/embedding", r"position_embedding.weight", "copy"),
    (r"und_trans/layers_(\d+)/(self_attn|mlp)/(\w+)/kernel", r"und_trans.layers.\1.\2.\3.weight", "linear"),
    (r"und_trans/layers_(\d+)/(self_attn|mlp)/(\w+)/bias", r"und_trans.layers.\1.\2.\3.bias", "copy"),
    (r"und_trans/layers_(\d+)/(layer_norm\d)/scale", r"und_trans.layers.\1.\2.weight", "copy"),
    (r"und_trans/layers_(\d+)/(layer_norm\d)/bias", r"und_trans.layers.\1.\2.bias", "copy"),
    (r"fusion_proj/norm/scale", r"fusion_proj.0.weight", "copy"),
    (r"fusion_proj/fc1/kernel", r"fusion_proj.1.weight", "linear"),
    (r"fusion_proj/fc1/bias", r"fusion_proj.1.bias", "copy"),
    (r"fusion_proj/fc2/kernel", r"fusion_proj.3.weight", "linear"),
    (r"fusion_proj/fc2/bias", r"fusion_proj.3.bias", "copy"),
    (r"time_embed/mlp_(\d)/kernel", r"time_embed.mlp.\1.weight", "linear"),
    (r"time_embed/mlp_(\d)/bias", r"time_embed.mlp.\1.bias", "copy"),
    (r"time_embed_proj/kernel", r"time_embed_proj.weight", "linear"),
    (r"time_embed_proj/bias", r"time_embed_proj.bias", "copy"),
    (r"diff_proj/fc1/kernel", r"diff_proj.0.weight", "linear"),
    (r"diff_proj/fc1/bias", r"diff_proj.0.bias", "copy"),
    (r"diff_proj/fc2/kernel", r"diff_proj.2.weight", "linear"),
    (r"diff_proj/fc2/bias", r"diff_proj.2.bias", "copy"),
    (r"diffusion_head_a/layers_(\d+)/adaLN_modulation/kernel", r"diffusion_head_a.\1.adaLN_modulation.1.weight", "linear"),
    (r"diffusion_head_a/layers_(\d+)/adaLN_modulation/bias", r"diffusion_head_a.\1.adaLN_modulation.1.bias", "copy"),
    (r"diffusion_head_a/layers_(\d+)/(self_attn|mlp)/(\w+_proj)/kernel", r"diffusion_head_a.\1.\2.\3.weight", "linear"),
    (r"diffusion_head_a/layers_(\d+)/self_attn/(q_norm|k_norm)/scale", r"diffusion_head_a.\1.self_attn.\2.weight", "copy"),
    (r"diffusion_head_a/layers_(\d+)/(\w+_layernorm)/scale", r"diffusion_head_a.\1.\2.weight", "copy"),
    (r"diffusion_head_b/norm_final/scale", r"diffusion_head_b.norm_final.weight", "copy"),
    (r"diffusion_head_b/linear/kernel", r"diffusion_head_b.linear.weight", "linear"),
    (r"diffusion_head_b/linear/bias", r"diffusion_head_b.linear.bias", "copy"),
    (r"diffusion_head_b/adaLN_modulation/kernel", r"diffusion_head_b.adaLN_modulation.1.weight", "linear"),
    (r"diffusion_head_b/adaLN_modulation/bias", r"diffusion_head_b.adaLN_modulation.1.bias", "copy"),
)
_COMPILED = tuple((re.compile(f"^{f}$"), t, k) for f, t, k in RULES)

log = logging.getLogger(__name__)


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


def torch_key(flax_path: str) -> tuple[str, str]:
  """Unrolled flax path 'a/b/c' -> (torch key, kind)."""
  for pattern, template, kind in _COMPILED:
    m = pattern.match(flax_path)
    if m:
      return m.expand(template), kind
  raise KeyError(f"no mapping rule for param {flax_path}")


def to_torch_layout(arr: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return np.ascontiguousarray(arr.T)
  if kind == "conv2d":
    return np.ascontiguousarray(np.transpose(arr, (3, 2, 0, 1)))
  return arr


def to_flax_layout(arr: np.ndarray, kind: str) -> np.ndarray:
  """Returns a new array (never a view of a memory-mapped file)."""
  if kind == "linear":
    return np.ascontiguousarray(arr.T)
  if kind == "conv2d":
    return np.ascontiguousarray(np.transpose(arr, (2, 3, 1, 0)))
  return np.array(arr)


def torch_shape(flax_shape: tuple, kind: str) -> tuple:
  if kind == "linear":
    return tuple(reversed(flax_shape))
  if kind == "conv2d":
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(flax_shape)


# ------------------------------------------------------- flat trees and scanning
def flatten(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


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
  """Stacked 'x/layers/rest' (leading layer axis) -> 'x/layers_{i}/rest'."""
  out = {}
  for path, v in flat.items():
    m = _STACKED.match(path)
    if m:
      for i in range(v.shape[0]):
        out[f"{m.group(1)}/layers_{i}/{m.group(2)}"] = take(v, i)
    else:
      out[path] = v
  return out


# ----------------------------------------------------------------- conversion
def params_to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Flax params (plain or scanned) -> the original's state_dict (numpy).

  With tied embeddings the original's state_dict holds `showo.lm_head.weight`
  too (the same tensor); it is written, as the original writes it.
  """
  flat = unroll_flat(flatten(params), take=lambda a, i: np.asarray(a[i]))
  sd = {}
  for path, arr in flat.items():
    key, kind = torch_key(path)
    sd[key] = to_torch_layout(np.asarray(arr), kind)
  if "showo.lm_head.weight" not in sd and "showo.model.embed_tokens.weight" in sd:
    sd["showo.lm_head.weight"] = sd["showo.model.embed_tokens.weight"]
  return sd


def warn_if_untied_copy(state_dict, alias: str, target: str, source: str = "") -> bool:
  """Logs a warning if a tied copy (`alias`, e.g. lm_head.weight) differs from the
  tensor the tied model uses (`target`, the embeddings). Returns True if it differs."""
  a, b = np.asarray(state_dict[alias]), np.asarray(state_dict[target])
  if a.shape == b.shape and np.array_equal(a, b):
    return False
  log.warning("%s%s differs from %s, but the embeddings are tied "
              "(tie_word_embeddings): the model uses %s and ignores %s",
              f"{source}: " if source else "", alias, target, target, alias)
  return True


def state_dict_to_params(state_dict, expected_shapes: Mapping[str, tuple], *, dtype=None,
                         source: str = "", allow_missing_prefixes=(), ignore_unexpected=()) -> dict:
  """The original's state_dict (any mapping-like with keys()/[]) -> Flax params.

  expected_shapes: flat {flax path: shape} of the model (scanned or unrolled) from
  `jax.eval_shape`. Raises KeyMismatchError listing every missing, unexpected and
  wrong-shape key. Tensors are read one at a time (lazy state_dicts stay lazy).
  `dtype=None` keeps the stored dtype.
  """
  keys = set(state_dict.keys())
  plan = {}  # flax (unrolled) path -> (torch key, kind, expected shape, stacked path, layer)
  for path, shape in expected_shapes.items():
    m = _STACKED.match(path)
    if m:
      for i in range(shape[0]):
        p = f"{m.group(1)}/layers_{i}/{m.group(2)}"
        plan[p] = torch_key(p) + (tuple(shape[1:]), path, i)
    else:
      plan[path] = torch_key(path) + (tuple(shape), path, None)
  tied = "showo/model/embed_tokens/embedding" in plan and "showo/lm_head/kernel" not in plan
  aliases = {}
  if tied:
    embed, head = "showo.model.embed_tokens.weight", "showo.lm_head.weight"
    if embed not in keys and head in keys:
      aliases[embed] = head
    elif embed in keys and head in keys:
      warn_if_untied_copy(state_dict, head, embed, source)
    keys.discard(head)
  missing, wrong = [], []
  for path, (key, kind, shape, _, _) in plan.items():
    src = aliases.get(key, key)
    if src not in state_dict:
      if not key.startswith(tuple(allow_missing_prefixes)):
        missing.append(key)
      continue
    got = tuple(state_dict.shape(src)) if hasattr(state_dict, "shape") else tuple(np.shape(state_dict[src]))
    if got != torch_shape(shape, kind):
      wrong.append(f"{key} {got} (expected {torch_shape(shape, kind)})")
  used = {aliases.get(v[0], v[0]) for v in plan.values()}
  unexpected = sorted(k for k in keys - used if not k.startswith(tuple(ignore_unexpected)))
  if missing or unexpected or wrong:
    raise KeyMismatchError(sorted(missing), unexpected, wrong, source)
  flat, stacks = {}, {}
  for path, (key, kind, shape, spath, layer) in plan.items():
    src = aliases.get(key, key)
    if src not in state_dict:
      continue
    arr = to_flax_layout(np.asarray(state_dict[src]), kind)
    if dtype is not None:
      arr = arr.astype(dtype)
    if layer is None:
      flat[path] = arr
    else:
      stacks.setdefault(spath, {})[layer] = arr
  for spath, per_layer in stacks.items():
    flat[spath] = np.stack([per_layer[i] for i in range(len(per_layer))])
  return unflatten(flat)
