"""Hugging Face Qwen2.5 and SigLIP checkpoints as parts of the Show-o2 param tree.

Stage 1 starts from a pretrained LLM and SigLIP (spec 1.2). Rather than a second
mapping table, these are renames of the Show-o2 one (`showo2_keys.RULES`):

  Qwen2ForCausalLM  `model.*`, `lm_head.weight`   <-> `showo.model.*`, `showo.lm_head.weight`
  SigLIP vision     `{p}encoder.layers.{i}.*`      <-> `und_trans.layers.{i}.*`  (all but the last layer)
                    `{p}embeddings.position_embedding.weight` <-> `position_embedding.weight`

where the SigLIP prefix `{p}` is `vision_model.` inside a SiglipModel or older
SiglipVisionModel files, and empty in transformers>=5 SiglipVisionModel files.
Everything of SigLIP that Show-o2 drops (patch embedding, last layer,
post-layernorm, pooling head, text tower) is ignored by design, not an error.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import numpy as np

from showo2_jax import param_mapping, paths
from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.models import config as model_config
from showo2_jax.models import siglip_vision

QWEN2_MODEL_TYPES = ("qwen2",)
SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
_POS = "embeddings.position_embedding.weight"


def model_type(directory: str) -> Optional[str]:
  cfg = paths.read_json(paths.join(directory, "config.json")) or {}
  return cfg.get("model_type")


# ------------------------------------------------------------------------ Qwen2
def qwen2_config(hf_json: dict, resize_vocab: Optional[int] = None) -> model_config.Qwen2Config:
  """Our Qwen2Config from HF config.json; `resize_vocab` keeps the first N rows."""
  cfg = model_config.qwen2_config_from_hf(hf_json)
  if resize_vocab is not None:
    if resize_vocab <= 0:
      raise ValueError(f"--resize-vocab must be positive, got {resize_vocab}")
    cfg = dataclasses.replace(cfg, vocab_size=int(resize_vocab))
  return cfg


def qwen2_key(flax_path: str) -> tuple[str, str]:
  """'showo/model/...' -> ('model....', layout)."""
  key, layout = showo2_keys.torch_key(flax_path)
  return key[len("showo."):], layout


def qwen2_ignored(key: str) -> bool:
  return key.endswith("rotary_emb.inv_freq")  # a buffer older transformers saved


# ----------------------------------------------------------------------- SigLIP
def siglip_config(hf_json: dict) -> model_config.SiglipConfig:
  return model_config.siglip_config_from_hf(hf_json)


def siglip_prefix(keys: Iterable[str]) -> str:
  """The prefix of the vision tower's keys ('vision_model.' or '').

  A full SiglipModel also has `text_model.embeddings.position_embedding`; the
  vision tower is the one with a patch embedding.
  """
  keys = set(keys)
  found = [k[:-len(_POS)] for k in keys if k.endswith(_POS)]
  if len(found) > 1:
    found = [p for p in found if p + "embeddings.patch_embedding.weight" in keys]
  if len(found) != 1:
    raise checkpoint_io.CheckpointFormatError(
        "not a SigLIP vision checkpoint: expected one '[vision_model.]" + _POS +
        f"' (the vision tower's), found {len(found)}")
  return found[0]


def siglip_key(flax_path: str, prefix: str) -> tuple[str, str]:
  """'und_trans/layers_3/...' or 'position_embedding/embedding' -> HF SigLIP key."""
  key, layout = showo2_keys.torch_key(flax_path)
  if key == "position_embedding.weight":
    return prefix + _POS, layout
  if key.startswith("und_trans."):
    return prefix + "encoder." + key[len("und_trans."):], layout
  raise KeyError(f"{flax_path} is not a SigLIP parameter")


def siglip_ignored(key: str, prefix: str, kept_layers: int) -> bool:
  """Keys of a SigLIP checkpoint that Show-o2 does not use."""
  if not key.startswith(prefix):
    return True  # text tower, logit scale/bias of a full SiglipModel
  rest = key[len(prefix):]
  if rest.startswith(("embeddings.patch_embedding.", "embeddings.position_ids", "post_layernorm.", "head.")):
    return True
  if rest.startswith("encoder.layers."):
    return int(rest.split(".")[2]) >= kept_layers
  return False


# ------------------------------------------------- SigLIP pixel tower (teacher)
def load_siglip_vision(path: str, dtype=np.float32) -> tuple[siglip_vision.SiglipVisionTower, dict]:
  """(tower, params) of the SigLIP pixel tower (the distillation teacher,
  models/siglip_vision.py) from a Hugging Face SigLIP directory (SiglipVisionModel or
  SiglipModel; either key prefix). Raises CheckpointFormatError on a bad dir."""
  cfg_json = paths.read_json(paths.join(path, "config.json"))
  if cfg_json is None:
    raise checkpoint_io.CheckpointFormatError(f"{path}: no config.json (not a SigLIP directory)")
  config = siglip_vision.SiglipVisionConfig.from_hf(cfg_json)
  with checkpoint_io.StateDict(path) as sd:
    p = siglip_prefix(sd.keys())
    get = lambda k: np.asarray(sd[p + k], dtype)
    params: dict = {
        "patch_embedding": {"kernel": param_mapping.to_flax_layout(get("embeddings.patch_embedding.weight"),
                                                                 "conv").astype(dtype),
                            "bias": get("embeddings.patch_embedding.bias")},
        "position_embedding": get("embeddings.position_embedding.weight"),
        "post_layernorm": {"scale": get("post_layernorm.weight"), "bias": get("post_layernorm.bias")},
    }
    for i in range(config.num_layers):
      layer: dict = {}
      for flax_leaf, key, layout in _siglip_vision_layer_entries(i):
        node = layer
        parts = flax_leaf.split("/")
        for part in parts[:-1]:
          node = node.setdefault(part, {})
        node[parts[-1]] = param_mapping.to_flax_layout(get(key), layout).astype(dtype)
      params[f"layers_{i}"] = layer
  return siglip_vision.SiglipVisionTower(config), params


def _siglip_vision_layer_entries(i: int):
  """(flax leaf under layers_i, HF key after the prefix, layout) of one encoder layer."""
  out = []
  for mod, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "out_proj")), ("mlp", ("fc1", "fc2"))):
    for n in names:
      out.append((f"{mod}/{n}/kernel", f"encoder.layers.{i}.{mod}.{n}.weight", "linear"))
      out.append((f"{mod}/{n}/bias", f"encoder.layers.{i}.{mod}.{n}.bias", "copy"))
  for ln in ("layer_norm1", "layer_norm2"):
    out.append((f"{ln}/scale", f"encoder.layers.{i}.{ln}.weight", "copy"))
    out.append((f"{ln}/bias", f"encoder.layers.{i}.{ln}.bias", "copy"))
  return out
