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
import json
from typing import Iterable, Optional

from showo2_jax import paths
from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.models import config as model_config

QWEN2_MODEL_TYPES = ("qwen2",)
SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
_POS = "embeddings.position_embedding.weight"


def read_json(path: str) -> Optional[dict]:
  """The JSON at `path` (local or gs://), or None if there is no such file."""
  return json.loads(paths.read_text(path)) if paths.exists(path) else None


def model_type(directory: str) -> Optional[str]:
  cfg = read_json(paths.join(directory, "config.json")) or {}
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
