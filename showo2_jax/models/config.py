"""Typed, hashable model configuration.

The user-facing configs are ml_collections ConfigDicts (`configs/*.py`); the model
modules take these frozen dataclasses instead, so they can be module attributes
(hashable) and so a typo fails at construction, not deep inside a trace.

Three constructors cover every source of truth:
  * `Showo2Config.from_config_dict(cfg.model)`  (our ml_collections configs),
  * `Showo2Config.from_original_dir(path)`      (the original's config.json, plus
    `llm_config.json` / `siglip_config.json` when present, as in the fixtures),
  * the presets below (1.5B and 7B, section 1 of the spec).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from typing import Any, Mapping, Optional

from showo2_jax import paths


class ConfigError(ValueError):
  """A configuration is missing a field or has an inconsistent value."""


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int = 151669          # rows of embed_tokens / lm_head (after resize)
  hidden_size: int = 1536
  intermediate_size: int = 8960
  num_layers: int = 28
  num_heads: int = 12
  num_kv_heads: int = 2
  head_dim: int = 128
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """The SigLIP vision encoder whose blocks (minus the last) are the semantic layers."""
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 26              # layers actually used (SigLIP's 27 minus the last)
  num_heads: int = 16
  layer_norm_eps: float = 1e-6
  position_grid: int = 27           # position table is position_grid**2 rows


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """llama3-style RoPE scaling (the flow head's)."""
  factor: float = 32.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class FlowHeadConfig:
  hidden_size: int = 2048
  intermediate_size: int = 8192
  num_layers: int = 10
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 64
  rms_norm_eps: float = 1e-5
  qk_norm_eps: float = 1e-6
  final_norm_eps: float = 1e-6
  rope_theta: float = 5e5
  rope_scaling: Optional[RopeScaling] = RopeScaling()


@dataclasses.dataclass(frozen=True)
class Showo2Config:
  llm: Qwen2Config = Qwen2Config()
  siglip: SiglipConfig = SiglipConfig()
  flow_head: FlowHeadConfig = FlowHeadConfig()
  latent_channels: int = 16
  patch_size: int = 2
  # In patch units (tokens per side), as the original's image_latent_height/width.
  image_latent_height: int = 27
  image_latent_width: int = 27
  add_time_embeds: bool = True
  time_embed_dim: int = 256         # sinusoid width (frequency_embedding_size)
  fusion_norm_eps: float = 1e-6
  # Numerics and memory switches (not architecture).
  dtype: str = "float32"            # compute dtype: float32 | bfloat16
  param_dtype: str = "float32"
  # RoPE inverse frequencies of the LLM and the flow head: "compute" rounds them to
  # the compute dtype, as the original's bf16 runs do (`model.to(torch.bfloat16)` in
  # its inference scripts, DeepSpeed's bf16 engine in its training: the released
  # weights were trained that way); "float32" keeps them exact. No effect in float32.
  rope_inv_freq_dtype: str = "compute"
  remat_policy: str = "none"        # see layers.remat_policy for the names
  scan_layers: bool = False
  # LLM and flow-head attention (models/attention.py): "dense" (the reference),
  # "chunked" (pure JAX, attention_chunk_size query rows at a time; same numbers,
  # O(chunk * L) instead of O(L^2) attention memory) or "splash" (TPU Pallas kernel,
  # block-sparse omni mask, attention_chunk_size = its block; interpret mode off TPU)
  # or "flash" (GPU, tokamax kernels, the mask as one key range per query).
  attention_impl: str = "dense"
  attention_chunk_size: int = 512

  def __post_init__(self):
    if self.attention_impl not in ("dense", "chunked", "splash", "flash"):
      raise ConfigError("attention_impl must be 'dense', 'chunked', 'splash' or 'flash', "
                        f"got {self.attention_impl!r}")
    if self.attention_impl == "flash" and importlib.util.find_spec("tokamax") is None:
      raise ConfigError("attention_impl='flash' needs tokamax: pip install -e '.[gpu]'")
    if self.rope_inv_freq_dtype not in ("compute", "float32"):
      raise ConfigError(f"rope_inv_freq_dtype must be 'compute' or 'float32', got {self.rope_inv_freq_dtype!r}")

  @property
  def hidden_size(self) -> int:
    return self.llm.hidden_size

  @property
  def patch_dim(self) -> int:
    """Channels of one output token: p*p*C."""
    return self.patch_size * self.patch_size * self.latent_channels

  @property
  def has_projections(self) -> bool:
    """time_embed_proj and diff_proj exist only when LLM and flow-head widths differ."""
    return self.llm.hidden_size != self.flow_head.hidden_size

  def replace(self, **kw) -> "Showo2Config":
    return dataclasses.replace(self, **kw)

  # ------------------------------------------------------------------ builders
  @classmethod
  def from_config_dict(cls, cfg: Mapping[str, Any]) -> "Showo2Config":
    """Build from an ml_collections ConfigDict (or plain dict) `config.model`."""
    cfg = _to_dict(cfg)
    return _from_nested(cls, cfg, "model")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_original_dir(cls, path: str, **overrides) -> "Showo2Config":
    """Reads an original Show-o2 model directory (config.json, optional
    llm_config.json and siglip_config.json). Missing LLM/SigLIP configs are taken
    from the presets by LLM width (1536 -> 1.5B, 3584 -> 7B)."""
    cfg_path = paths.join(path, "config.json")
    if not paths.exists(cfg_path):
      raise ConfigError(f"{path}: no config.json (expected an original Show-o2 model directory)")
    top = json.loads(paths.read_text(cfg_path))
    llm_json = paths.read_json(paths.join(path, "llm_config.json"))
    siglip_json = paths.read_json(paths.join(path, "siglip_config.json"))
    return cls.from_original_json(top, llm_json, siglip_json, **overrides)

  @classmethod
  def from_original_json(cls, top: Mapping[str, Any], llm_json: Optional[Mapping[str, Any]] = None,
                         siglip_json: Optional[Mapping[str, Any]] = None, **overrides) -> "Showo2Config":
    hidden = int(top.get("hidden_size", 2048))
    if llm_json is None:
      preset = PRESETS_BY_WIDTH.get(hidden)
      if preset is None:
        raise ConfigError(
            f"no llm_config.json and no preset for LLM width {hidden}; "
            f"put the Qwen2 config.json next to the checkpoint as llm_config.json")
      llm = preset.llm
    else:
      llm = qwen2_config_from_hf(llm_json)
    if "llm_vocab_size" in top and top["llm_vocab_size"]:
      llm = dataclasses.replace(llm, vocab_size=int(top["llm_vocab_size"]))
    if llm.hidden_size != hidden:
      raise ConfigError(f"config.json hidden_size={hidden} but the LLM config has {llm.hidden_size}")
    if siglip_json is None:
      siglip = SiglipConfig(hidden_size=int(top.get("clip_latent_dim", 1152)))
      if siglip.hidden_size != 1152:
        raise ConfigError("no siglip_config.json and clip_latent_dim != 1152 (so400m)")
    else:
      siglip = siglip_config_from_hf(siglip_json)
    fh = top.get("flow_head")
    flow = FlowHeadConfig(num_layers=int(top.get("num_diffusion_layers", 10)))
    if fh:
      scaling = fh.get("rope_scaling")
      flow = FlowHeadConfig(
          hidden_size=int(fh["hidden_size"]),
          intermediate_size=int(fh["intermediate_size"]),
          num_layers=int(top.get("num_diffusion_layers", 10)),
          num_heads=int(fh["num_attention_heads"]),
          num_kv_heads=int(fh["num_key_value_heads"]),
          head_dim=int(fh["head_dim"]),
          rms_norm_eps=float(fh.get("rms_norm_eps", 1e-5)),
          rope_theta=float(fh.get("rope_theta", 5e5)),
          rope_scaling=None if not scaling else RopeScaling(
              factor=float(scaling["factor"]),
              low_freq_factor=float(scaling["low_freq_factor"]),
              high_freq_factor=float(scaling["high_freq_factor"]),
              original_max_position_embeddings=int(scaling["original_max_position_embeddings"])),
      )
    cfg = cls(
        llm=llm, siglip=siglip, flow_head=flow,
        latent_channels=int(top.get("image_latent_dim", 16)),
        patch_size=int(top.get("patch_size", 2)),
        image_latent_height=int(top.get("image_latent_height", 27)),
        image_latent_width=int(top.get("image_latent_width", 27)),
        add_time_embeds=bool(top.get("add_time_embeds", True)),
    )
    return cfg.replace(**overrides) if overrides else cfg

  def to_original_json(self) -> tuple[dict, dict, dict]:
    """(config.json, llm_config.json, siglip_config.json) as the original writes them."""
    top = {
        "_class_name": "Showo2Qwen2_5",
        "llm_vocab_size": self.llm.vocab_size,
        "load_from_showo": True,
        "image_latent_dim": self.latent_channels,
        "image_latent_height": self.image_latent_height,
        "image_latent_width": self.image_latent_width,
        "video_latent_height": self.image_latent_height,
        "video_latent_width": self.image_latent_width,
        "patch_size": self.patch_size,
        "hidden_size": self.llm.hidden_size,
        "clip_latent_dim": self.siglip.hidden_size,
        "num_diffusion_layers": self.flow_head.num_layers,
        "add_time_embeds": self.add_time_embeds,
        "add_qk_norm": True,
        # Read by the original's constructor (it builds the LLM config from it).
        "llm_model_path": {1536: "Qwen/Qwen2.5-1.5B-Instruct", 3584: "Qwen/Qwen2.5-7B-Instruct"}.get(
            self.llm.hidden_size, ""),
        "clip_pretrained_model_path": "google/siglip-so400m-patch14-384",
        "flow_head": {
            "hidden_size": self.flow_head.hidden_size,
            "head_dim": self.flow_head.head_dim,
            "intermediate_size": self.flow_head.intermediate_size,
            "num_attention_heads": self.flow_head.num_heads,
            "num_key_value_heads": self.flow_head.num_kv_heads,
            "rms_norm_eps": self.flow_head.rms_norm_eps,
            "rope_theta": self.flow_head.rope_theta,
            "rope_scaling": None if self.flow_head.rope_scaling is None else {
                "rope_type": "llama3", **dataclasses.asdict(self.flow_head.rope_scaling)},
        },
    }
    llm = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": self.llm.vocab_size, "hidden_size": self.llm.hidden_size,
        "intermediate_size": self.llm.intermediate_size,
        "num_hidden_layers": self.llm.num_layers, "num_attention_heads": self.llm.num_heads,
        "num_key_value_heads": self.llm.num_kv_heads, "head_dim": self.llm.head_dim,
        "hidden_act": "silu", "rms_norm_eps": self.llm.rms_norm_eps,
        "rope_theta": self.llm.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": self.llm.tie_word_embeddings,
        "use_sliding_window": False, "max_position_embeddings": 32768,
        "torch_dtype": "float32",
    }
    sig = {
        "model_type": "siglip_vision_model", "hidden_size": self.siglip.hidden_size,
        "intermediate_size": self.siglip.intermediate_size,
        "num_hidden_layers": self.siglip.num_layers + 1,
        "num_attention_heads": self.siglip.num_heads, "num_channels": 3, "patch_size": 14,
        "image_size": 14 * self.siglip.position_grid, "layer_norm_eps": self.siglip.layer_norm_eps,
        "hidden_act": "gelu_pytorch_tanh", "attention_dropout": 0.0,
    }
    return top, llm, sig


# The top-level parameter groups of Show-o2 that each partial checkpoint kind holds:
# an HF Qwen2.5 checkpoint is the LLM (`showo`), an HF SigLIP one the vision tower the
# semantic layers are cut from. Conversion, Orbax restores and warm starts read it here.
KIND_SUBTREES = {"qwen2": ("showo",), "siglip": ("und_trans", "position_embedding")}


def model_config_for(kind: str, config, scan_layers: bool = False) -> Showo2Config:
  """The full Show-o2 config whose params contain checkpoint `kind`'s ('showo2',
  'qwen2', 'siglip') with typed `config`; ValueError for another kind."""
  if kind == "showo2":
    return config.replace(scan_layers=scan_layers)
  if kind == "qwen2":
    return Showo2Config(llm=config, scan_layers=scan_layers)
  if kind == "siglip":
    return Showo2Config(siglip=config, scan_layers=scan_layers)
  raise ValueError(f"no Show-o2 params for checkpoint kind '{kind}'")


def qwen2_config_from_hf(d: Mapping[str, Any]) -> Qwen2Config:
  """HF `Qwen2Config` json -> ours (vocab left as in the json)."""
  # transformers >= 5 writes rope settings under `rope_parameters`.
  rope = dict(d.get("rope_parameters") or {})
  scaling = d.get("rope_scaling") or {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}
  if scaling and (rope.get("rope_type", "default") != "default" or d.get("rope_scaling")):
    raise ConfigError(f"Qwen2 rope scaling {scaling} is not supported (Qwen2.5 uses none)")
  theta = d.get("rope_theta", rope.get("rope_theta"))
  if theta is None:
    raise ConfigError("Qwen2 config has neither rope_theta nor rope_parameters.rope_theta")
  heads = int(d["num_attention_heads"])
  hidden = int(d["hidden_size"])
  return Qwen2Config(
      vocab_size=int(d["vocab_size"]), hidden_size=hidden,
      intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
      num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads") or heads),
      head_dim=int(d.get("head_dim") or hidden // heads),
      rope_theta=float(theta), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)))


def siglip_config_from_hf(d: Mapping[str, Any]) -> SiglipConfig:
  """HF SigLIP vision config json -> ours; drops the last layer as Show-o2 does."""
  d = d.get("vision_config", d)
  image_size, patch = int(d["image_size"]), int(d["patch_size"])
  if image_size % patch:
    raise ConfigError(f"SigLIP image_size {image_size} is not a multiple of patch_size {patch}")
  return SiglipConfig(
      hidden_size=int(d["hidden_size"]), intermediate_size=int(d["intermediate_size"]),
      num_layers=int(d["num_hidden_layers"]) - 1, num_heads=int(d["num_attention_heads"]),
      layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)), position_grid=image_size // patch)


def _to_dict(cfg: Any) -> Any:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return cfg


def _from_nested(cls, d: Mapping[str, Any], where: str):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(d) - set(fields)
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}")
  kw = {}
  for name, value in d.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
      value = _from_nested(type(default), value, f"{where}.{name}")
    elif name == "rope_scaling" and isinstance(value, Mapping):
      value = _from_nested(RopeScaling, value, f"{where}.{name}")
    kw[name] = value
  return cls(**kw)


# ---------------------------------------------------------------- presets
# Section 1 of the spec. The flow head is identical at both sizes.
SHOWO2_1P5B = Showo2Config(
    llm=Qwen2Config(vocab_size=151669, hidden_size=1536, intermediate_size=8960, num_layers=28,
                    num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e6,
                    rms_norm_eps=1e-6, tie_word_embeddings=True))
SHOWO2_7B = Showo2Config(
    llm=Qwen2Config(vocab_size=151669, hidden_size=3584, intermediate_size=18944, num_layers=28,
                    num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1e6,
                    rms_norm_eps=1e-6, tie_word_embeddings=False))
PRESETS_BY_WIDTH = {1536: SHOWO2_1P5B, 3584: SHOWO2_7B}
