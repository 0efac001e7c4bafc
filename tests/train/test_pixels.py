"""The VAE pixel path around the step: loading the frozen VAE, errors, precomputed logvar, AOT.

The step itself (pixel step == latents step fed the VAE's sample) is tested in
test_step.py, where the stage-1 step is compiled anyway; the CLI runs the pixel
path end to end, through kill -9, restart and SIGTERM, in test_resume.py.
"""
import jax
import numpy as np
import pytest

from showo2_jax import sharding as sharding_lib
from showo2_jax.config_lib import load_config
from showo2_jax.train import aot, trainer, vae_encoder
from showo2_jax.convert import loading as convert_loading
from showo2_jax.vae import loading, wan


def test_vae_checkpoint_sources_give_the_same_params(tmp_path, wan_vae_fixture_dir):
  """`vae_checkpoint`: a .safetensors file, its directory, an Orbax wan_vae dir, `random`."""
  from showo2_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  config = load_config("tiny_train:pixels")
  mesh = sharding_lib.create_mesh(config.mesh)
  config.vae_checkpoint = str(wan_vae_fixture_dir / "model.safetensors")
  encoder, from_file = vae_encoder.load_params(config, mesh)
  config.vae_checkpoint = str(wan_vae_fixture_dir)
  _, from_dir = vae_encoder.load_params(config, mesh)
  host = convert_loading.load_wan_vae_params(wan_vae_fixture_dir)
  orbax_dir = tmp_path / "vae_orbax"
  orbax_io.save_params(str(orbax_dir), host, wan.WanVAEConfig.from_json(
      wan_vae_fixture_dir / "config.json"), kind="wan_vae")
  config.vae_checkpoint = str(orbax_dir)
  _, from_orbax = vae_encoder.load_params(config, mesh)
  for other in (from_dir, from_orbax):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(from_file), jax.device_get(other))
  assert encoder.cfg.dtype == "bfloat16"
  config.vae_checkpoint = "random"
  _, rand = vae_encoder.load_params(config, mesh)
  assert jax.tree.structure(rand) == jax.tree.structure(from_file)
  assert set(rand) == {"encoder", "conv1"}            # the decoder never reaches the devices
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(rand))

  config.vae_checkpoint = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="vae_checkpoint"):
    vae_encoder.load_params(config, mesh)
  config.vae.dim = 16
  config.vae_checkpoint = str(orbax_dir)
  with pytest.raises(ValueError, match="holds the VAE"):
    vae_encoder.load_params(config, mesh)


def test_pixels_without_a_vae_stop_with_a_clear_error():
  config = load_config("tiny_train:pixels")
  config.vae_checkpoint = ""
  mesh = sharding_lib.create_mesh(config.mesh)
  pixels = {"text_tokens": np.zeros((8, 4), np.int32),
            "pixel_values": np.zeros((8, 3, 64, 64), np.float32)}
  with pytest.raises(ValueError, match="config.vae_checkpoint is empty.*precompute-latents"):
    trainer.load_vae_if_needed(config, pixels, mesh)
  # Precomputed latents are used as they are, whatever else the batch has.
  latents = dict(pixels, latents=np.zeros((8, 16, 8, 8), np.float32))
  assert trainer.load_vae_if_needed(config, latents, mesh) == (None, None)


def test_precomputed_logvar_is_sampled_like_the_vae():
  """latents + latents_logvar (precompute without --deterministic): the step draws
  mu + exp(0.5 clip(logvar)) eps from the VAE stream, as `vae.sample` would."""
  rng = jax.random.PRNGKey(3)
  mu = jax.random.normal(jax.random.PRNGKey(1), (4, 1, 16, 8, 8))
  logvar = jax.random.normal(jax.random.PRNGKey(2), (4, 1, 16, 8, 8)) - 3.0
  batch = {"modality_positions": np.zeros((4, 1, 2), np.int32), "latents": mu,
           "latents_logvar": logvar, "pixel_values": np.zeros((4, 1, 3, 64, 64), np.float32)}
  out = vae_encoder.prepare_visuals(batch, rng)
  assert set(out) == {"modality_positions", "latents"}
  np.testing.assert_array_equal(out["latents"], wan.sample_posterior(mu, logvar, rng))
  plain = vae_encoder.prepare_visuals({"latents": mu}, rng)
  np.testing.assert_array_equal(plain["latents"], mu)


def test_compile_sizes_the_pixel_path():
  """`showo2-jax compile` on a pixel config lowers the step with the VAE inside."""
  config = load_config("tiny_train:pixels")
  lowered, _ = aot.lower_train_step(config, jax.devices()[:1])
  args = lowered.in_tree.children()[0].children()
  assert len(args) == 4                      # state, batch, rng, VAE params
  text = lowered.as_text()
  assert "tensor<8x1x3x64x64xf32>" in text and "convolution" in text   # pixels in, VAE convs
