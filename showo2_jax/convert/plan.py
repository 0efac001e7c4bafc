"""The `param_mapping.Plan` of each converted checkpoint kind: which PyTorch tensor
becomes which slice of which stored Flax leaf.

A plan lists, for one checkpoint kind and config, every PyTorch-side tensor
(`param_mapping.Entry`: key, torch shape, layout hook) and where it lives in our
tree (leaf path, and layer index when decoder layers are stacked for `nn.scan`).
Converters walk it leaf by leaf (to Orbax) or key by key (to PyTorch), so they
touch one tensor at a time; `param_mapping.match` checks a source checkpoint
against it and reports every missing, unexpected and wrong-shape key at once.
"""
from __future__ import annotations

import functools
from typing import Optional

from showo2_jax import param_mapping
from showo2_jax.convert import hf, showo2_keys
from showo2_jax.models import config as model_config

# HF Qwen2's names of a tied LM head: a copy of the embedding (Show-o2's:
# showo2_keys.TIED, applied by showo2_keys.plan).
TIED = {"qwen2": ("lm_head.weight", "model.embed_tokens.weight")}


@functools.lru_cache(maxsize=8)
def _model_shapes(config: model_config.Showo2Config) -> dict[str, tuple]:
  """Flat param shapes of the model (an abstract trace: ~1 s, hence the cache)."""
  from showo2_jax.convert import showo2_torch  # pylint: disable=import-outside-toplevel
  return dict(showo2_torch.expected_shapes(config))


def build(kind: str, config, *, scan_layers: bool = False, key_prefix: str = "",
          resize_vocab: Optional[int] = None) -> param_mapping.Plan:
  """The plan of `kind` ('showo2' | 'qwen2' | 'siglip') for its typed `config`."""
  if kind not in ("showo2", *model_config.KIND_SUBTREES):
    raise ValueError(f"no tensor plan for kind '{kind}'")
  shapes = dict(_model_shapes(model_config.model_config_for(kind, config, scan_layers)))
  if kind in model_config.KIND_SUBTREES:
    shapes = {k: v for k, v in shapes.items() if k.split("/")[0] in model_config.KIND_SUBTREES[kind]}
  if kind == "showo2":
    return showo2_keys.plan(shapes)
  if kind == "qwen2":
    rows = None
    if resize_vocab is not None:
      rows = {"model.embed_tokens.weight": config.vocab_size, "lm_head.weight": config.vocab_size}
    entries = param_mapping.entries(shapes, hf.qwen2_key, rows)
  else:
    entries = param_mapping.entries(shapes, lambda p: hf.siglip_key(p, key_prefix))
  aliases = {}
  if kind in TIED:
    alias, target = TIED[kind]
    if alias not in {e.key for e in entries} and target in {e.key for e in entries}:
      aliases[alias] = target
  ignore = {
      "qwen2": hf.qwen2_ignored,
      "siglip": lambda k: hf.siglip_ignored(k, key_prefix, config.num_layers),
  }[kind]
  return param_mapping.Plan(kind, entries, shapes, aliases, ignore=ignore, key_prefix=key_prefix)
