"""Fixtures of the inference tests: a tiny random Show-o2 model and its pipeline."""
import jax
import jax.numpy as jnp
import pytest

from showo2_jax.convert import loading
from showo2_jax.data import testing
from showo2_jax.data import tokenizer as tokenizer_lib
from showo2_jax.models.showo2 import Showo2
from showo2_jax.sample import pipeline
from tiny_model import random_params, tiny_config


@pytest.fixture(scope="session")
def tiny():
  """(model, params) of the tiny config, float32, random weights."""
  config = tiny_config()
  params = jax.tree.map(jnp.asarray, random_params(config))
  return Showo2(config, empty_slots_overwrite_bos=False), params


@pytest.fixture(scope="module")
def pipe(tiny, tmp_path_factory, wan_vae_fixture_dir):
  """A Pipeline of `tiny` with a test tokenizer and the fixture Wan VAE (per test module)."""
  model, params = tiny
  tok, special = tokenizer_lib.load_tokenizer(
      testing.build_test_tokenizer(tmp_path_factory.mktemp("tokenizer")))
  vae = loading.load_vae(str(wan_vae_fixture_dir))
  return pipeline.Pipeline(model.config, params, tok, special, vae, max_seq_len=50)
