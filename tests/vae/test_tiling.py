"""Tiled decode/encode: exact blending machinery, and closeness to the untiled VAE.

Tiling is an approximation (zero padding at tile borders, frame-global attention in the
middle blocks). With the fixture's random weights the decoder's receptive field spans
~16 latents and is not local as in a trained VAE. On the small case below (256x256 pixels,
a 32x32 latent, 24-latent tiles with overlap 16) we measured relative L2 errors of 0.067
(decode) and 0.007 (encode) against the untiled VAE; they shrink as tiles grow (0.054 /
0.005 with 32-latent tiles on 320x320), and trained weights are far more local.
"""
import numpy as np
import pytest

from showo2_jax.parity.metrics import relative_error
from showo2_jax.vae import tiling, wan


def _smooth_image(size):
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.stack([np.sin(6 * xx + 3 * yy), np.cos(5 * yy), 2 * xx * yy - 1])
  return img[None, :, None].astype(np.float32)


@pytest.mark.parametrize("size, tile, overlap, starts", [
    (6, 8, 2, [0]), (6, 4, 2, [0, 2]), (20, 12, 8, [0, 4, 8]), (54, 32, 8, [0, 22]),
    (128, 32, 8, [0, 24, 48, 72, 96]),
])
def test_tile_starts_cover_the_grid_with_equal_tiles(size, tile, overlap, starts):
  assert tiling.tile_starts(size, tile, overlap) == starts


def test_blending_reconstructs_any_pointwise_map():
  """For a map without spatial context, blended tiles equal the whole image exactly."""
  x = np.random.default_rng(0).standard_normal((2, 3, 13, 11, 4)).astype(np.float32)
  up8 = lambda part: np.repeat(np.repeat(part, 8, 2), 8, 3)
  fn = lambda part: (up8(part) * 2 - 1, up8(part[..., :1]) ** 2)
  up, sq = tiling._tiled(fn, x, tile=5, overlap=2, scale_in=1, scale_out=8)  # pylint: disable=protected-access
  np.testing.assert_allclose(up, fn(x)[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sq, fn(x)[1], rtol=1e-6, atol=1e-6)
  z = np.random.default_rng(1).standard_normal((1, 1, 40, 24, 2)).astype(np.float32)
  down = lambda part: (part[:, :, ::8, ::8] + 1,)
  (got,) = tiling._tiled(down, z, tile=3, overlap=1, scale_in=8, scale_out=1)  # pylint: disable=protected-access
  np.testing.assert_allclose(got, down(z)[0], rtol=1e-6)


def test_a_single_tile_is_the_untiled_decode(wan_vae_params, wan_vae_cfg, wan_vae_cases):
  z = wan_vae_cases["image_mu"]
  np.testing.assert_allclose(tiling.decode_video_tiled(wan_vae_params, z, wan_vae_cfg, tile=4),
                             wan.decode_video(wan_vae_params, z, wan_vae_cfg), atol=1e-6)


def test_tiled_decode_and_encode_stay_close_to_untiled(wan_vae_params, wan_vae_cfg):
  image = _smooth_image(256)
  mu, _ = wan.encode_posterior(wan_vae_params, image, wan_vae_cfg)
  mu_tiled, _ = tiling.encode_posterior_tiled(wan_vae_params, image, wan_vae_cfg, tile=24,
                                              overlap=16)
  enc_err = relative_error(mu_tiled, mu)
  full = wan.decode_video(wan_vae_params, mu, wan_vae_cfg)
  tiled = tiling.decode_video_tiled(wan_vae_params, mu, wan_vae_cfg, tile=24, overlap=16)
  dec_err = relative_error(tiled, full)
  print(f"tiled vs untiled relative error: encode {enc_err:.3f}, decode {dec_err:.3f}")
  assert tiled.shape == full.shape == (1, 3, 1, 256, 256)
  assert np.abs(tiled).max() <= 1.0
  assert dec_err < 0.1 and enc_err < 0.02
