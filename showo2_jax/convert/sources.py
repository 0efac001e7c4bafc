"""Recognising and opening PyTorch-side checkpoints for conversion.

Four layouts are understood (`KIND` names are stored with the Orbax checkpoint):
  showo2   an original Show-o2 model directory: config.json (+ llm_config.json,
           siglip_config.json) and pytorch_model.bin / *.safetensors / shards;
  wan_vae  `Wan2.1_VAE.pth` (or a directory with the VAE's weights + config.json),
           original or diffusers (`AutoencoderKLWan`) key names;
  qwen2    a Hugging Face Qwen2/Qwen2.5 directory (stage-1 LLM init);
  siglip   a Hugging Face SigLIP directory (stage-1 semantic-layer init).
A `Source` bundles the lazy state_dict, the typed config, the tensor plan and a
record of the source (key order, dtypes, config files) that lets `to-torch`
reproduce it exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from showo2_jax import param_mapping, paths
from showo2_jax.convert import checkpoint_io, hf
from showo2_jax.convert import plan as plan_lib
from showo2_jax.models import config as model_config
from showo2_jax.vae import loading as vae_loading
from showo2_jax.vae.wan import WanVAEConfig

KINDS = ("showo2", "wan_vae", "qwen2", "siglip")
# Small text files written back verbatim by to-torch, per kind.
CONFIG_FILES = {
    "showo2": ("config.json", "llm_config.json", "siglip_config.json"),
    "qwen2": ("config.json", "generation_config.json"),
    "siglip": ("config.json",),
    "wan_vae": ("config.json",),
}


class UnknownLayoutError(checkpoint_io.CheckpointFormatError):
  """A checkpoint that is none of the layouts the converter knows."""


@dataclasses.dataclass
class Source:
  kind: str
  path: str
  state_dict: checkpoint_io.StateDict
  config: Any                         # Showo2Config | Qwen2Config | SiglipConfig | WanVAEConfig
  plan: Optional[param_mapping.Plan]  # None for wan_vae (converted by the VAE module)
  record: dict


def _root(path: str) -> str:
  return paths.as_str(path) if paths.isdir(path) else paths.parent(path)


def _is_vae_config(cfg: Optional[dict]) -> bool:
  return bool(cfg) and "z_dim" in cfg and "dim_mult" in cfg


def detect_kind(path: str) -> str:
  """The layout of `path`, from its config.json, else from its key names."""
  if not paths.exists(path):
    raise checkpoint_io.CheckpointFormatError(f"{path}: no such file or directory")
  cfg = paths.read_json(paths.join(path, "config.json")) if paths.isdir(path) else None
  if cfg:
    mt = cfg.get("model_type")
    if mt in hf.QWEN2_MODEL_TYPES:
      return "qwen2"
    if mt in hf.SIGLIP_MODEL_TYPES:
      return "siglip"
    if _is_vae_config(cfg) or cfg.get("_class_name") == "AutoencoderKLWan":
      return "wan_vae"
    if str(cfg.get("_class_name", "")).startswith("Showo2") or "llm_vocab_size" in cfg:
      return "showo2"
  with checkpoint_io.StateDict(path) as sd:
    keys = sd.keys()
  if any(k.startswith("showo.") for k in keys):
    return "showo2"
  if any(k.startswith(("encoder.downsamples.", "decoder.upsamples.", "encoder.conv_in.")) for k in keys):
    return "wan_vae"
  if "model.embed_tokens.weight" in keys:
    return "qwen2"
  if any(k.endswith("embeddings.position_embedding.weight") for k in keys):
    return "siglip"
  shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
  raise UnknownLayoutError(
      f"{path}: unknown checkpoint layout (config.json model_type="
      f"{(cfg or {}).get('model_type')!r}; keys: {shown or 'none'}). Known layouts: a Show-o2 model "
      "directory, Wan2.1_VAE.pth, a Hugging Face Qwen2.5 or SigLIP directory; pass --kind to force one")


def _record(path: str, sd: checkpoint_io.StateDict, kind: str) -> dict:
  root = _root(path)
  files = {}
  for name in CONFIG_FILES[kind]:
    p = paths.join(root, name)
    if paths.exists(p):
      files[name] = paths.read_text(p)
  return {
      "path": os.path.abspath(path),
      "weights": [os.path.basename(f) for f in sd.files()],
      "tensors": [[k, sd.dtype(k).name, list(sd.shape(k))] for k in sd.keys()],
      "files": files,
  }


def _vae_config(path: str):
  cfg_path = os.path.join(_root(path), "config.json")
  if _is_vae_config(paths.read_json(cfg_path)):
    return WanVAEConfig.from_json(cfg_path)
  return WanVAEConfig()


def open_source(path: str, kind: Optional[str] = None, *, scan_layers: bool = False,
                resize_vocab: Optional[int] = None) -> Source:
  """Opens `path` lazily (nothing but headers is read) as a `kind` checkpoint."""
  kind = kind or detect_kind(path)
  if kind not in KINDS:
    raise ValueError(f"unknown kind '{kind}' (known: {', '.join(KINDS)})")
  if resize_vocab is not None and kind != "qwen2":
    raise ValueError("--resize-vocab applies to a Qwen2 (LLM) checkpoint only")
  root = _root(path)
  sd = checkpoint_io.StateDict(path)
  try:
    record = _record(path, sd, kind)
    key_prefix, plan = "", None
    if kind == "showo2":
      config = model_config.Showo2Config.from_original_dir(root, scan_layers=scan_layers)
    elif kind == "qwen2":
      hf_json = paths.read_json(os.path.join(root, "config.json"))
      if hf_json is None:
        raise model_config.ConfigError(f"{root}: no config.json next to the Qwen2 weights")
      config = hf.qwen2_config(hf_json, resize_vocab)
      record["resize_vocab"] = resize_vocab
    elif kind == "siglip":
      hf_json = paths.read_json(os.path.join(root, "config.json"))
      if hf_json is None:
        raise model_config.ConfigError(f"{root}: no config.json next to the SigLIP weights")
      config = hf.siglip_config(hf_json)
      key_prefix = hf.siglip_prefix(sd.keys())
      record["key_prefix"] = key_prefix
    else:
      config = _vae_config(path)
      record["vae_layout"] = vae_layout(sd.keys())  # original | diffusers
    if kind != "wan_vae":
      plan = plan_lib.build(kind, config, scan_layers=scan_layers, key_prefix=key_prefix,
                            resize_vocab=resize_vocab)
  except Exception:
    sd.close()
    raise
  return Source(kind, os.path.abspath(path), sd, config, plan, record)


# ------------------------------------------------------------ Wan VAE hook
def vae_to_flax(state_dict, config, dtype=None) -> dict:
  """Wan VAE state_dict -> Flax params. The VAE is small (~500 MB in fp32), so it is
  converted in one piece by the VAE module's own (strict) table."""
  return vae_loading.torch_state_dict_to_flax(dict(state_dict.items()), config, dtype=dtype)


def vae_to_torch(params, config, layout: str = "original") -> dict:
  """Flax VAE params -> state_dict with the original (or diffusers) key names."""
  return vae_loading.flax_to_torch_state_dict(params, config, layout=layout)


def vae_layout(keys) -> str:
  return vae_loading.detect_layout(keys)


def vae_config_json(config) -> str:
  d = {k: v for k, v in dataclasses.asdict(config).items() if k != "dtype"}
  d["dropout"] = 0.0
  return json.dumps(d, indent=1)
