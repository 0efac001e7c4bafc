"""Fixtures of the inference tests: a tiny random Show-o2 model."""
import jax
import jax.numpy as jnp
import pytest

from showo2_jax.models.showo2 import Showo2
from tiny_model import random_params, tiny_config


@pytest.fixture(scope="session")
def tiny():
  """(model, params) of the tiny config, float32, random weights."""
  config = tiny_config()
  params = jax.tree.map(jnp.asarray, random_params(config))
  return Showo2(config, empty_slots_overwrite_bos=False), params
