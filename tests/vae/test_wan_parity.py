"""The Flax Wan VAE reproduces the original PyTorch outputs (golden fixture)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.parity.metrics import relative_error
from showo2_jax.parity.wan_vae import run_wan_vae_parity
from showo2_jax.vae import wan


@pytest.mark.slow
def test_every_fixture_output_within_threshold(wan_vae_fixture_dir):
  results = run_wan_vae_parity(wan_vae_fixture_dir)
  names = [name for name, _, _ in results]
  assert names == ["image_mu", "image_logvar", "image_decoded", "video_mu", "video_logvar",
                   "video_decoded"]
  for name, err, threshold in results:
    assert threshold == 1e-4
    assert err < threshold, f"{name}: relative error {err:.3e}"


def test_channels_last_api_matches_channels_first(wan_vae_params, wan_vae_cfg, wan_vae_cases):
  video = wan_vae_cases["video"]
  mu_cf, _ = wan.encode_posterior(wan_vae_params, video, wan_vae_cfg)
  mu_cl, _ = wan.encode_posterior(wan_vae_params, np.moveaxis(video, 1, -1), wan_vae_cfg,
                                  channels_last=True)
  np.testing.assert_array_equal(np.moveaxis(np.asarray(mu_cl), -1, 1), mu_cf)


def test_4d_images_are_single_frames(wan_vae_params, wan_vae_cfg, wan_vae_cases):
  image = wan_vae_cases["image"]
  mu4, _ = wan.encode_posterior(wan_vae_params, image[:, :, 0], wan_vae_cfg)
  assert mu4.shape == (2, 16, 4, 4)
  assert relative_error(mu4, wan_vae_cases["image_mu"][:, :, 0]) < 1e-4
  pixels = wan.decode_video(wan_vae_params, mu4, wan_vae_cfg)
  assert pixels.shape == (2, 3, 32, 32)


@pytest.mark.slow
def test_multi_chunk_scan_is_causal_and_matches_the_fixture(wan_vae_params, wan_vae_cfg,
                                                           wan_vae_cases):
  """9 frames = first chunk + 2 scanned chunks: the carried caches leave the latents and
  decoded frames of the fixture's 5-frame prefix unchanged, as the causal original."""
  video = wan_vae_cases["video"]
  longer = np.concatenate([video, -video[:, :, 1:]], axis=2)
  mu9, _ = wan.encode_posterior(wan_vae_params, longer, wan_vae_cfg)
  assert mu9.shape == (1, 16, 3, 4, 4)
  assert relative_error(mu9[:, :, :2], wan_vae_cases["video_mu"]) < 1e-4
  pix9 = wan.decode_video(wan_vae_params, mu9, wan_vae_cfg, clamp=False)
  assert pix9.shape == (1, 3, 9, 32, 32)
  # Decoding starts from our mu here, so allow for the encoder's ~1e-7 error.
  assert relative_error(pix9[:, :, :5], wan_vae_cases["video_decoded"]) < 1e-4
  assert np.all(np.isfinite(pix9))


def test_sampling_reproduces_the_original_noise_quirk(wan_vae_params, wan_vae_cfg,
                                                      wan_vae_cases):
  image = wan_vae_cases["image"]
  rng = jax.random.PRNGKey(3)
  mu, logvar = wan.encode_posterior(wan_vae_params, image, wan_vae_cfg)
  sampled = wan.encode_latents(wan_vae_params, image, wan_vae_cfg, rng)
  eps = jax.random.normal(rng, mu.shape)
  expected = mu + jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0)) * eps
  np.testing.assert_allclose(sampled, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(wan.encode_latents(wan_vae_params, image, wan_vae_cfg), mu)


def test_decode_clamps_to_unit_range(wan_vae_params, wan_vae_cfg, wan_vae_cases):
  raw = wan_vae_cases["video_decoded"]
  assert np.abs(raw).max() > 1  # the fixture stores the unclamped decoder output
  clamped = wan.decode_video(wan_vae_params, wan_vae_cases["video_mu"], wan_vae_cfg)
  assert float(jnp.abs(clamped).max()) <= 1.0
  assert relative_error(clamped, np.clip(raw, -1, 1)) < 1e-4


@pytest.mark.parametrize("bad", [dict(dim_mult=(1, 2)), dict(attn_scales=(1.0,)),
                                 dict(latents_mean=(0.0,))])
def test_config_rejects_inconsistent_fields(bad):
  with pytest.raises(ValueError):
    wan.WanVAEConfig(**bad)


def test_config_from_config_dict_and_json(wan_vae_fixture_dir, wan_vae_cfg):
  ml_collections = pytest.importorskip("ml_collections")
  cd = ml_collections.ConfigDict(dict(
      dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
      temperal_downsample=[False, True, True], latents_mean=list(wan_vae_cfg.latents_mean),
      latents_std=list(wan_vae_cfg.latents_std)))
  assert wan.WanVAEConfig.from_config_dict(cd) == wan_vae_cfg
  assert wan_vae_cfg.spatial_factor == 8 and wan_vae_cfg.temporal_factor == 4
  hash(wan_vae_cfg)  # static jit argument
