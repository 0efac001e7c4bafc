"""Shapes the VAE cannot take fail early with a ValueError that says what to fix."""
import numpy as np
import pytest

from showo2_jax.vae import tiling, wan


@pytest.mark.parametrize("shape, channels_last, message", [
    ((1, 4, 1, 32, 32), False, "expected 3 colour channels, got 4"),
    ((1, 1, 32, 32, 1), True, "expected 3 colour channels, got 1"),
    ((1, 3, 2, 32, 32), False, "frame count must be 1 + 4k"),
    ((1, 3, 8, 32, 32), False, "got 8"),
    ((1, 3, 1, 30, 32), False, "multiples of 8, got 30x32"),
    ((1, 3, 1, 32, 36), False, "multiples of 8, got 32x36"),
    ((3, 32, 32), False, "expected a 5D video"),
])
def test_encode_rejects_bad_shapes(wan_vae_params, wan_vae_cfg, shape, channels_last, message):
  with pytest.raises(ValueError, match=message.replace("+", r"\+")):
    wan.encode_posterior(wan_vae_params, np.zeros(shape, np.float32), wan_vae_cfg,
                         channels_last=channels_last)


def test_channel_first_hint_for_channel_last_arrays(wan_vae_params, wan_vae_cfg):
  with pytest.raises(ValueError, match="channels_last=True"):
    wan.encode_posterior(wan_vae_params, np.zeros((1, 1, 32, 32, 3), np.float32), wan_vae_cfg)


@pytest.mark.parametrize("shape, message", [
    ((1, 8, 1, 4, 4), "expected 16 latent channels, got 8"),
    ((1, 16, 0, 4, 4), "empty latents"),
    ((16, 4, 4), "expected 5D latents"),
])
def test_decode_rejects_bad_shapes(wan_vae_params, wan_vae_cfg, shape, message):
  with pytest.raises(ValueError, match=message):
    wan.decode_video(wan_vae_params, np.zeros(shape, np.float32), wan_vae_cfg)
  with pytest.raises(ValueError, match=message):
    tiling.decode_video_tiled(wan_vae_params, np.zeros(shape, np.float32), wan_vae_cfg)


def test_tiled_encode_checks_shapes_too(wan_vae_params, wan_vae_cfg):
  with pytest.raises(ValueError, match="frame count"):
    tiling.encode_posterior_tiled(wan_vae_params, np.zeros((1, 3, 3, 64, 64), np.float32),
                                  wan_vae_cfg)


def test_config_json_with_dropout_is_rejected(tmp_path):
  (tmp_path / "config.json").write_text('{"dim": 8, "dropout": 0.1}')
  with pytest.raises(ValueError, match="dropout"):
    wan.WanVAEConfig.from_json(tmp_path / "config.json")


def test_wan22_style_diffusers_configs_are_rejected():
  with pytest.raises(ValueError, match="not a Wan2.1 VAE config"):
    wan.WanVAEConfig.from_config_dict(dict(base_dim=160, z_dim=48, is_residual=True,
                                           patch_size=2))
