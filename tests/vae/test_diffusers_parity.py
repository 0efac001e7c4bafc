"""Against diffusers' AutoencoderKLWan, an independent PyTorch implementation (optional).

Skipped unless diffusers is installed. A tiny random model in the diffusers key layout is
converted by our loader and run on a 9-frame clip (the first chunk plus two scanned ones),
so this also checks the layout table and the multi-chunk caches against torch.
"""
import numpy as np
import pytest

from showo2_jax.parity.metrics import relative_error
from showo2_jax.convert import loading as convert_loading
from showo2_jax.vae import loading, wan


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_matches_diffusers_autoencoder_kl_wan(wan_vae_cfg, tmp_path):
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  cfg = wan_vae_cfg  # dim 8: the same shapes as the golden fixture
  torch.manual_seed(0)
  model = diffusers.AutoencoderKLWan(
      base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
      num_res_blocks=cfg.num_res_blocks, attn_scales=[],
      temperal_downsample=list(cfg.temperal_downsample)).eval()
  with torch.no_grad():  # diffusers zero-inits some layers; make every weight count
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else p[0].numel() ** -0.5))
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  assert loading.detect_layout(sd) == "diffusers"
  params = loading.torch_state_dict_to_flax(sd, cfg)
  model.save_pretrained(tmp_path)  # config.json (diffusers fields) + safetensors
  from_dir = convert_loading.load_wan_vae_params(tmp_path)
  np.testing.assert_array_equal(from_dir["decoder"]["upsamples_3"]["time_conv"]["kernel"],
                                params["decoder"]["upsamples_3"]["time_conv"]["kernel"])
  assert wan.WanVAEConfig.from_json(tmp_path / "config.json").dim == cfg.dim

  video = np.random.default_rng(0).uniform(-1, 1, (1, 3, 9, 32, 32)).astype(np.float32)
  mean = np.asarray(cfg.latents_mean, np.float32).reshape(1, -1, 1, 1, 1)
  inv_std = (1 / np.asarray(cfg.latents_std, np.float32)).reshape(1, -1, 1, 1, 1)
  with torch.no_grad():
    posterior = model.encode(torch.from_numpy(video)).latent_dist
    mu_raw = posterior.mean.numpy()
    logvar_ref = posterior.logvar.numpy()  # diffusers clamps logvar to [-30, 20]
    decoded_ref = model.decode(torch.from_numpy(mu_raw)).sample.numpy()  # clamped

  mu, logvar = wan.encode_posterior(params, video, cfg)
  assert mu.shape == (1, 16, 3, 4, 4)
  assert relative_error(mu, (mu_raw - mean) * inv_std) < 1e-4
  assert relative_error(np.clip(logvar, -30, 20), logvar_ref) < 1e-4
  decoded = wan.decode_video(params, (mu_raw - mean) * inv_std, cfg)
  assert decoded.shape == (1, 3, 9, 32, 32)
  assert relative_error(decoded, decoded_ref) < 1e-4
