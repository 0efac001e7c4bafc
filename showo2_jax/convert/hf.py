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

import jax
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
  SiglipModel; either key prefix). Raises CheckpointFormatError on a bad dir and
  param_mapping.KeyMismatchError naming every missing, unexpected or wrong-shape key."""
  cfg_json = paths.read_json(paths.join(path, "config.json"))
  if cfg_json is None:
    raise checkpoint_io.CheckpointFormatError(f"{path}: no config.json (not a SigLIP directory)")
  config = siglip_vision.SiglipVisionConfig.from_hf(cfg_json)
  tower = siglip_vision.SiglipVisionTower(config)
  pixels = jax.ShapeDtypeStruct((1, 3, config.image_size, config.image_size), np.float32)
  shapes = param_mapping.leaf_shapes(jax.eval_shape(tower.init, jax.random.PRNGKey(0), pixels)["params"])
  with checkpoint_io.StateDict(path) as sd:
    prefix = siglip_prefix(sd.keys())
    plan = param_mapping.Plan(
        "siglip_vision", param_mapping.entries(shapes, lambda p: siglip_vision_key(p, prefix)), shapes,
        ignore=lambda k: not k.startswith(prefix) or k[len(prefix):].startswith(_VISION_UNUSED),
        key_prefix=prefix)
    m = param_mapping.match(plan, sd)
    m.raise_if_bad(path)
    params = param_mapping.unflatten(param_mapping.read_params(sd, plan, m, dtype))
  return tower, params


# Keys of a SigLIP vision tower the pixel tower does not use: the pooling head, the
# position-id buffer of older checkpoints.
_VISION_UNUSED = ("head.", "embeddings.position_ids")


def siglip_vision_key(flax_path: str, prefix: str) -> tuple[str, str]:
  """SiglipVisionTower param path -> (HF SigLIP key, layout hook): 'layers_3/mlp/fc1/kernel'
  -> 'encoder.layers.3.mlp.fc1.weight' (linear); LayerNorm scale -> weight."""
  parts = flax_path.split("/")
  layout = {"kernel": "conv" if parts[0] == "patch_embedding" else "linear"}.get(parts[-1], "copy")
  name = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  if parts[0] == "position_embedding":
    return prefix + _POS, layout
  if parts[0] == "patch_embedding":
    return f"{prefix}embeddings.patch_embedding.{name}", layout
  if parts[0].startswith("layers_"):
    return f"{prefix}encoder.layers.{parts[0][len('layers_'):]}.{'.'.join(parts[1:-1])}.{name}", layout
  return f"{prefix}{'.'.join(parts[:-1])}.{name}", layout
