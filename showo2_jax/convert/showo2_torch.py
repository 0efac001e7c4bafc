"""Loading the original Show-o2 PyTorch checkpoints into Flax params.

A model directory holds the original's `config.json` plus weights
(`pytorch_model.bin`, `model.safetensors`, or shards with an index); the LLM and
SigLIP configs are taken from `llm_config.json` / `siglip_config.json` when
present, else from the 1.5B/7B presets (selected by the LLM width).
"""
from __future__ import annotations

import logging
from typing import Optional

import jax
import jax.numpy as jnp

from showo2_jax import param_mapping, paths
from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import Showo2, init_params

log = logging.getLogger(__name__)


def abstract_params(config: Showo2Config):
  """Boxed (logically partitioned) ShapeDtypeStruct tree of the model's params."""
  model = Showo2(config)
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))["params"]


def expected_shapes(config: Showo2Config) -> dict[str, tuple]:
  """Flat {Flax path: shape} of the model's params (an abstract trace)."""
  return param_mapping.leaf_shapes(abstract_params(config))


def load_state_dict_params(state_dict, config: Showo2Config, *, dtype=None, source: str = "",
                           **kw) -> dict:
  """Maps a state_dict (mapping-like, lazy ok) onto `config`'s param tree."""
  return showo2_keys.state_dict_to_params(state_dict, expected_shapes(config), dtype=dtype,
                                          source=source, **kw)


def load_original(path: str, config: Optional[Showo2Config] = None, *, dtype=None, param_dtype=None,
                  **config_overrides) -> tuple[Showo2Config, dict]:
  """Reads an original Show-o2 checkpoint (directory or weights file).

  Args:
    path: model directory (config.json + weights) or a weights file.
    config: use this config instead of the directory's.
    dtype: the precision to run in, "float32" or "bfloat16" (a numpy/jax dtype is
      accepted too). Sets the config's compute dtype AND casts the params to it,
      as the original's `model.to(torch.bfloat16)`: one switch, so a bf16 load can
      never compute in fp32 by mistake. None: the config's compute dtype (float32
      for an original directory) and the params in their stored dtype.
    param_dtype: params' dtype when it must differ from `dtype`, e.g. "float32"
      master weights with `dtype="bfloat16"` compute, as in training.
    **config_overrides: other config fields (scan_layers=True, remat_policy=...,
      rope_inv_freq_dtype="float32").

  Returns (config, params): params are host numpy arrays (leaf dtype = the
  config's `param_dtype` when `dtype`/`param_dtype` is given, else as stored).
  Raises ConfigError / ValueError for a bad directory or an unknown dtype.
  """
  if "param_dtype" in config_overrides or "dtype" in config_overrides:
    raise TypeError("pass dtype= / param_dtype= as keywords of load_original")
  if config is None:
    root = paths.as_str(path) if paths.isdir(path) else paths.parent(path)
    config = Showo2Config.from_original_dir(root, **config_overrides)
  elif config_overrides:
    config = config.replace(**config_overrides)
  if dtype is not None:
    name = dtype_name(dtype)
    config = config.replace(dtype=name, param_dtype=name)
  if param_dtype is not None:
    config = config.replace(param_dtype=dtype_name(param_dtype))
  cast = config.param_dtype if (dtype is not None or param_dtype is not None) else None
  with checkpoint_io.StateDict(path) as sd:
    log.info("loading %d tensors from %s", len(sd), path)
    params = load_state_dict_params(sd, config, dtype=cast and jnp.dtype(cast), source=path)
  return config, params


def dtype_name(dtype) -> str:
  """"bfloat16" / np.float32 / jnp.bfloat16 -> the config's name ("bfloat16", ...)."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'bfloat16'") from e
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"unsupported dtype {name!r}; use 'float32' or 'bfloat16'")
  return name
