"""The Show-o2 mapping table between our Flax param paths and the original's state_dict keys.

Used in both directions (loading released checkpoints, writing PyTorch-loadable
ones); HF Qwen2 and SigLIP names are renames of it (`convert/hf.py`). Paths are
written in their unrolled form (`layers_{i}`); scanned trees (stacked on a leading
layer axis under `layers`) are unstacked/stacked around it. Each rule names its
layout hook (`showo2_jax.param_mapping.HOOKS`: exact transposes, no
renormalisation), which also converts the Wan VAE's table.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from showo2_jax import param_mapping

# (flax path regex, torch key template, layout hook)
#   linear: torch (out, in)   <-> flax kernel (in, out)
#   conv:   torch (O, I, H, W) <-> flax kernel (H, W, I, O)
#   copy:   same layout (biases, norm scales, embeddings)
RULES = (
    (r"showo/model/embed_tokens/embedding", r"showo.model.embed_tokens.weight", "copy"),
    (r"showo/model/layers_(\d+)/(self_attn|mlp)/(\w+_proj)/kernel", r"showo.model.layers.\1.\2.\3.weight", "linear"),
    (r"showo/model/layers_(\d+)/self_attn/(\w+_proj)/bias", r"showo.model.layers.\1.self_attn.\2.bias", "copy"),
    (r"showo/model/layers_(\d+)/(\w+_layernorm)/scale", r"showo.model.layers.\1.\2.weight", "copy"),
    (r"showo/model/norm/scale", r"showo.model.norm.weight", "copy"),
    (r"showo/lm_head/kernel", r"showo.lm_head.weight", "linear"),
    (r"image_embedder_(und|gen)/proj/kernel", r"image_embedder_\1.proj.weight", "conv"),
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

TIED = ("showo.lm_head.weight", "showo.model.embed_tokens.weight")  # (tied copy, key it copies)


def torch_key(flax_path: str) -> tuple[str, str]:
  """Unrolled flax path 'a/b/c' -> (torch key, layout hook)."""
  for pattern, template, kind in _COMPILED:
    m = pattern.match(flax_path)
    if m:
      return m.expand(template), kind
  raise KeyError(f"no mapping rule for param {flax_path}")


def plan(expected_shapes: Mapping[str, tuple], kind: str = "showo2") -> param_mapping.Plan:
  """The entries of a model with these flat {flax path: shape} (scanned or unrolled),
  in the original's key names; a tied model reads/writes `showo.lm_head.weight` as a
  copy of the embeddings."""
  entries = param_mapping.entries(expected_shapes, torch_key)
  keys = {e.key for e in entries}
  alias, target = TIED
  aliases = {alias: target} if alias not in keys and target in keys else {}
  return param_mapping.Plan(kind, entries, dict(expected_shapes), aliases, write_aliases=True)


# ----------------------------------------------------------------- conversion
def params_to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Flax params (plain or scanned) -> the original's state_dict (numpy).

  With tied embeddings the original's state_dict holds `showo.lm_head.weight`
  too (the same tensor); it is written, as the original writes it.
  """
  flat = {k: np.asarray(v) for k, v in param_mapping.flatten(params).items()}
  p = plan({k: v.shape for k, v in flat.items()})
  return {k: param_mapping.to_torch(flat[p.entry(k).leaf], p.entry(k))
          for k in p.default_keys()}


def state_dict_to_params(state_dict, expected_shapes: Mapping[str, tuple], *, dtype=None,
                         source: str = "") -> dict:
  """The original's state_dict (any mapping-like with keys()/[]) -> Flax params.

  expected_shapes: flat {flax path: shape} of the model (scanned or unrolled) from
  `jax.eval_shape`. Raises `param_mapping.KeyMismatchError` listing every missing, unexpected and
  wrong-shape key. Tensors are read one at a time (lazy state_dicts stay lazy).
  `dtype=None` keeps the stored dtype. A tied copy that differs is warned about.
  """
  p = plan(expected_shapes)
  m = param_mapping.match(p, state_dict)
  m.raise_if_bad(source)
  param_mapping.warn_untied_copies(state_dict, p, m, source)
  return param_mapping.unflatten(param_mapping.read_params(state_dict, p, m, dtype))
