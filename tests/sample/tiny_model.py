"""Tiny random Show-o2 configs and weights for the inference tests (no download)."""
import flax.linen as nn
import numpy as np

from showo2_jax import param_mapping
from showo2_jax.config_lib import load_config
from showo2_jax.convert import showo2_keys
from showo2_jax.convert.showo2_torch import abstract_params
from showo2_jax.models.config import Showo2Config


def tiny_config() -> Showo2Config:
  return Showo2Config.from_config_dict(load_config("tiny").model)


def random_params(config: Showo2Config, seed: int = 0) -> dict:
  """Random non-zero numpy params of the model's shapes.

  Norm scales are near 1 and kernels small, so activations stay O(1) through the
  tiny stacks; unlike `init_params`, nothing is zero (adaLN, the output layer),
  so every path of the model matters in the tests.
  """
  abstract = nn.meta.unbox(abstract_params(config))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in param_mapping.flatten(abstract).items():
    if path.endswith("scale"):
      value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    else:
      value = 0.2 * rng.standard_normal(leaf.shape) / np.sqrt(max(leaf.shape[0], 1))
    flat[path] = value.astype(np.float32)
  return param_mapping.unflatten(flat)


def write_original_dir(path, config: Showo2Config, params: dict) -> dict:
  """Writes `params` as an original-layout Show-o2 directory at `path` (created):
  config.json, llm_config.json, siglip_config.json and model.safetensors.
  Returns the PyTorch state dict written."""
  import json  # pylint: disable=import-outside-toplevel
  from showo2_jax.convert import checkpoint_io  # pylint: disable=import-outside-toplevel
  path.mkdir(parents=True, exist_ok=True)
  for name, d in zip(("config.json", "llm_config.json", "siglip_config.json"),
                     config.to_original_json()):
    (path / name).write_text(json.dumps(d))
  sd = showo2_keys.params_to_state_dict(params)
  checkpoint_io.save_safetensors(sd, str(path / "model.safetensors"))
  return sd
