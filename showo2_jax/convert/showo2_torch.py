"""Loading the original Show-o2 PyTorch checkpoints into Flax params.

A model directory holds the original's `config.json` plus weights
(`pytorch_model.bin`, `model.safetensors`, or shards with an index); the LLM and
SigLIP configs are taken from `llm_config.json` / `siglip_config.json` when
present, else from the 1.5B/7B presets (selected by the LLM width).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import Showo2, init_params

log = logging.getLogger(__name__)


def abstract_params(config: Showo2Config):
  """Boxed (logically partitioned) ShapeDtypeStruct tree of the model's params."""
  model = Showo2(config)
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))["params"]


def expected_shapes(config: Showo2Config) -> dict[str, tuple]:
  # Unboxed without `nn.meta.unbox`'s sharding constraint, which fails on
  # ShapeDtypeStructs when a mesh is set (the trainer calls this under its mesh).
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  values = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x,
                        abstract_params(config), is_leaf=is_box)
  flat = showo2_keys.flatten(values)
  return {k: tuple(v.shape) for k, v in flat.items()}


def load_state_dict_params(state_dict, config: Showo2Config, *, dtype=None, source: str = "",
                           **kw) -> dict:
  """Maps a state_dict (mapping-like, lazy ok) onto `config`'s param tree."""
  return showo2_keys.state_dict_to_params(state_dict, expected_shapes(config), dtype=dtype,
                                          source=source, **kw)


def load_original(path: str, config: Optional[Showo2Config] = None, *, dtype=None,
                  **config_overrides) -> tuple[Showo2Config, dict]:
  """Reads an original Show-o2 checkpoint (directory or weights file).

  Returns (config, params) with params as host numpy arrays in the stored dtype
  (or `dtype`). `config_overrides` (e.g. dtype="bfloat16", scan_layers=True) apply
  to the config read from the directory.
  """
  if config is None:
    root = path if os.path.isdir(path) else os.path.dirname(path)
    config = Showo2Config.from_original_dir(root, **config_overrides)
  with checkpoint_io.StateDict(path) as sd:
    log.info("loading %d tensors from %s", len(sd), path)
    params = load_state_dict_params(sd, config, dtype=dtype, source=path)
  return config, params


def to_device(params, dtype=None):
  """Host numpy params -> jax arrays (optionally cast)."""
  return jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
