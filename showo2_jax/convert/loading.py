"""Loading what inference needs: Show-o2 weights, the Wan VAE, the tokenizer.

Checkpoints come in three layouts and are told apart by their files:
  * a training workdir (`config.json` + `checkpoints/<step>/state`, written by
    `showo2-jax train`): the latest step's params with the run's model config;
    the run also names its tokenizer and VAE (`run_config`). A multi-phase run
    such as `tiny_shapes` (`phases.json`) stands for its final phase;
  * our Orbax param checkpoints (`showo2_jax.json` / `_CHECKPOINT_METADATA`,
    written by `showo2_jax.convert.orbax_io`), which carry their own config;
  * the original PyTorch model directory (`config.json` + `pytorch_model.bin` /
    `model.safetensors`, optionally `llm_config.json` / `siglip_config.json`).
Both load to host numpy params, then go to the device in the compute dtype.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

from showo2_jax import paths
from showo2_jax.convert import orbax_io
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import to_dtype

log = logging.getLogger(__name__)

VAE_STRIDE = 8

# Released checkpoints whose config.json does not say the resolution they generate
# at. show-o2-1.5B-HQ ships the base model's `image_latent_height` 27 (432 px), but
# it was trained for, and its demo config generates at, 512 px (32 patches per side;
# spec 1.7). Keyed by the Hugging Face repository name, lower-cased.
RELEASED_RESOLUTIONS = {"show-o2-1.5b-hq": 512}


class CheckpointNotFoundError(FileNotFoundError):
  """The checkpoint path does not exist or holds no known checkpoint."""


def _check_exists(path: str, what: str) -> str:
  path = os.fspath(path)
  if not paths.exists(path):
    raise CheckpointNotFoundError(f"{what} not found: '{path}'")
  return path


def resolve_training_run(path: str) -> Optional[str]:
  """The training workdir `path` stands for, or None if it is not one.

  A workdir holds `config.json` and `checkpoints/`; a multi-phase run dir
  (`phases.json`, e.g. tiny_shapes) stands for its final Show-o2 phase.
  """
  path = os.fspath(path)
  if not paths.isdir(path):
    return None
  from showo2_jax.convert import training_run  # pylint: disable=g-import-not-at-top
  path = training_run.final_run_dir(path) or path
  if (paths.exists(paths.join(path, "config.json"))
      and paths.isdir(paths.join(path, "checkpoints"))):
    return path
  return None


def run_config(run_dir: str) -> dict:
  """The whole config (a dict) a training run wrote to its workdir."""
  return json.loads(paths.read_text(paths.join(run_dir, "config.json")))


def load_training_run(run_dir: str) -> tuple[Showo2Config, Any]:
  """(model config, host params) of a training workdir's latest checkpoint."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from showo2_jax.convert import training_run  # pylint: disable=g-import-not-at-top
  from showo2_jax.convert.showo2_torch import abstract_params  # pylint: disable=g-import-not-at-top
  if run_config(run_dir).get("train", {}).get("task", "showo2") != "showo2":
    raise ValueError(f"{run_dir}: a training run of another task "
                     f"({run_config(run_dir)['train']['task']}), not of Show-o2")
  config = training_run.run_model_config(run_dir)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          nn.meta.unbox(abstract_params(config)))
  try:
    params = orbax_io.restore_run_params(run_dir, abstract)
  except FileNotFoundError as e:
    raise CheckpointNotFoundError(f"{run_dir}: {e}") from None
  return config, jax.device_get(params)


def load_showo2(path: str, dtype: str = "float32") -> tuple[Showo2Config, Any]:
  """(config with compute dtype `dtype`, device params cast to `dtype`).

  Params are cast to the compute dtype, as the original casts the whole model
  (`model.to(bfloat16)`) for generation.
  """
  path = _check_exists(path, "checkpoint")
  run = resolve_training_run(path)
  if run is not None:
    config, params = load_training_run(run)
  elif orbax_io.is_orbax_dir(path):
    _, config, params = orbax_io.restore_params(path, kind="showo2")
  else:
    root = paths.as_str(path) if paths.isdir(path) else paths.parent(path)
    if not paths.exists(paths.join(root, "config.json")):
      raise CheckpointNotFoundError(
          f"'{path}' is neither an Orbax checkpoint of showo2-jax nor an original Show-o2 "
          "directory (config.json + pytorch_model.bin / model.safetensors)")
    from showo2_jax.convert.showo2_torch import load_original  # pylint: disable=g-import-not-at-top
    with paths.local_copy(path) as local:  # the weights are memory-mapped: gs:// is copied
      config, params = load_original(local)
  config = config.replace(dtype=dtype, param_dtype=dtype)
  return config, to_device(params, to_dtype(dtype))


def to_device(params, dtype) -> Any:
  """Host params -> device arrays in `dtype` (floating leaves only)."""
  def cast(a):
    return jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else jnp.asarray(a)
  return jax.tree.map(cast, params)


@dataclasses.dataclass
class Vae:
  """The Wan2.1 VAE with its params: pixels in [-1, 1] <-> normalised latents."""
  params: Any
  config: Any

  @property
  def stride(self) -> int:
    return self.config.spatial_factor

  def encode(self, pixels, rng=None) -> jax.Array:
    """(B, 3, H, W) or (B, 3, T, H, W) -> latents; rng samples the posterior as the
    original (`vae.sample`), None takes its mean."""
    from showo2_jax.vae import wan  # pylint: disable=g-import-not-at-top
    return wan.encode_latents(self.params, jnp.asarray(pixels, jnp.float32), self.config, rng)

  def decode(self, latents) -> jax.Array:
    """(B, 16, [T,] h, w) -> pixels in [-1, 1], float32 (clamped)."""
    from showo2_jax.vae import wan  # pylint: disable=g-import-not-at-top
    return wan.decode_video(self.params, jnp.asarray(latents, jnp.float32), self.config)


def load_wan_vae_params(path: str, cfg=None, *, dtype=None) -> dict:
  """Flax params of a Wan VAE from `Wan2.1_VAE.pth` (original keys) or a diffusers
  AutoencoderKLWan checkpoint (a local file or directory; key table in vae/loading).
  cfg (WanVAEConfig) defaults to the directory's config.json if there is one, else
  the full Wan2.1 VAE. Raises CheckpointFormatError / vae.loading.WanVAECheckpointError."""
  from showo2_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from showo2_jax.vae import loading  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  cfg = cfg if cfg is not None else _wan_vae_config(path)
  return loading.torch_state_dict_to_flax(checkpoint_io.read_state_dict(path), cfg, dtype=dtype)


def _wan_vae_config(path: str):
  """The WanVAEConfig of a VAE file or directory: its config.json, else the full Wan2.1."""
  from showo2_jax.vae import wan  # pylint: disable=g-import-not-at-top
  cfg_file = paths.join(path, "config.json")
  return wan.WanVAEConfig.from_json(cfg_file) if paths.isdir(path) and paths.exists(cfg_file) \
      else wan.WanVAEConfig()


def load_vae(path: str, dtype: str = "float32") -> Vae:
  """`Wan2.1_VAE.pth`, a directory with config.json + weights, or an Orbax wan_vae."""
  path = _check_exists(path, "VAE checkpoint")
  if orbax_io.is_orbax_dir(path):
    _, config, params = orbax_io.restore_params(path, kind="wan_vae")
  else:
    with paths.local_copy(path) as local:  # torch.load / mmap read local files: gs:// is copied
      config = _wan_vae_config(local)
      params = load_wan_vae_params(local, config)
  config = dataclasses.replace(config, dtype=dtype)
  return Vae(jax.tree.map(jnp.asarray, params), config)


def load_tokenizer(path: str):
  """(tokenizer, SpecialTokens) from a local Qwen2.5 tokenizer directory."""
  from showo2_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  _check_exists(path, "tokenizer directory")
  return tokenizer_lib.load_tokenizer(path)


def checkpoint_identity(path: str) -> Optional[str]:
  """The released repository a checkpoint comes from ('show-o2-1.5b-hq', ...), or None.

  Read from the folder names of the path (a download folder named after the repo,
  or the Hugging Face cache's `models--showlab--show-o2-1.5B-HQ/snapshots/<hash>`)
  and, for our Orbax checkpoints, from the path of the source they were converted
  from (recorded by `convert to-orbax`).
  """
  candidates = [paths.as_str(path)]
  if orbax_io.is_orbax_dir(candidates[0]):
    meta_file = paths.join(candidates[0], orbax_io.SIDECAR)
    try:
      with paths.open(meta_file) as f:
        source = (json.load(f).get("source") or {}).get("path")
      if source:
        candidates.append(source)
    except (OSError, ValueError):
      pass
  for candidate in candidates:
    for part in reversed(candidate.replace("\\", "/").split("/")):
      name = part.lower().split("--")[-1]  # models--showlab--show-o2-1.5B-HQ -> show-o2-1.5b-hq
      if name in RELEASED_RESOLUTIONS:
        return name
  return None


def default_resolution(path: str, config: Showo2Config) -> tuple[int, str]:
  """(pixels per side for generation, how it was chosen) for a checkpoint.

  A released checkpoint known by its identity (`checkpoint_identity`) uses the
  resolution it generates at (RELEASED_RESOLUTIONS); any other uses its config:
  `image_latent_height` patches x patch_size x the VAE stride 8.
  """
  identity = checkpoint_identity(path)
  if identity is not None:
    return RELEASED_RESOLUTIONS[identity], f"the released {identity} generates at this size"
  res = config.image_latent_height * config.patch_size * VAE_STRIDE
  return res, f"image_latent_height {config.image_latent_height} in its config"
