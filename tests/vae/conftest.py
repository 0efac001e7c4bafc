"""Fixture-sized Wan VAE shared by the tests in this folder (loaded once per session)."""
import numpy as np
import pytest

from showo2_jax.convert import loading as convert_loading
from showo2_jax.vae import loading, wan


@pytest.fixture(scope="session")
def wan_vae_cfg(wan_vae_fixture_dir):
  return wan.WanVAEConfig.from_json(wan_vae_fixture_dir / "config.json")


@pytest.fixture(scope="session")
def wan_vae_params(wan_vae_fixture_dir, wan_vae_cfg):
  return convert_loading.load_wan_vae_params(wan_vae_fixture_dir / "model.safetensors", wan_vae_cfg)


@pytest.fixture(scope="session")
def wan_vae_cases(wan_vae_fixture_dir):
  with np.load(wan_vae_fixture_dir / "cases.npz") as npz:
    return {k: npz[k] for k in npz.files}
