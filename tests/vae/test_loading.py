"""Checkpoint loading: key mapping both ways, file formats, and the error report."""

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from showo2_jax.convert import checkpoint_io
from showo2_jax.convert import loading as convert_loading
from showo2_jax.vae import loading, wan


@pytest.fixture(scope="module")
def original_sd(wan_vae_fixture_dir):
  return load_file(str(wan_vae_fixture_dir / "model.safetensors"))


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def test_table_covers_the_original_state_dict(original_sd, wan_vae_cfg):
  table = loading.param_table(wan_vae_cfg)
  assert {e.original_key for e in table} == set(original_sd)
  assert all(original_sd[e.original_key].shape == e.torch_shape for e in table)


def test_full_size_table_matches_the_spec():
  table = loading.param_table(wan.WanVAEConfig())
  assert len(table) == 194  # spec 9.2: 194 tensors, 126.9M parameters
  assert sum(int(np.prod(e.torch_shape)) for e in table) == 126_892_531
  shapes = {e.original_key: e.torch_shape for e in table}
  assert shapes["encoder.downsamples.5.time_conv.weight"] == (192, 192, 3, 1, 1)
  assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
  assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
  assert shapes["decoder.middle.1.norm.gamma"] == (384, 1, 1)


def test_round_trip_original_flax_original(original_sd, wan_vae_params):
  back = loading.flax_to_torch_state_dict(wan_vae_params)  # config inferred from params
  assert set(back) == set(original_sd)
  for k, v in original_sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_round_trip_through_the_diffusers_layout(wan_vae_params, wan_vae_cfg):
  diffusers_sd = loading.flax_to_torch_state_dict(wan_vae_params, wan_vae_cfg,
                                                  layout="diffusers")
  assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in diffusers_sd
  assert "post_quant_conv.weight" in diffusers_sd
  assert loading.detect_layout(diffusers_sd) == "diffusers"
  params = loading.torch_state_dict_to_flax(diffusers_sd, wan_vae_cfg)
  for (path, a), (path_b, b) in zip(sorted(_leaves(params)), sorted(_leaves(wan_vae_params))):
    assert path == path_b
    np.testing.assert_array_equal(a, b)


def test_conv_weights_are_transposed_to_flax_layout(original_sd, wan_vae_params):
  w = original_sd["encoder.downsamples.5.time_conv.weight"]  # (out, in, kt, kh, kw)
  k = wan_vae_params["encoder"]["downsamples_5"]["time_conv"]["kernel"]
  assert k.shape == (3, 1, 1, 16, 16)
  np.testing.assert_array_equal(k[2, 0, 0], w[:, :, 2, 0, 0].T)
  qkv = wan_vae_params["decoder"]["middle_1"]["to_qkv"]["kernel"]
  np.testing.assert_array_equal(qkv, original_sd["decoder.middle.1.to_qkv.weight"][:, :, 0, 0].T)


def test_infer_config_reads_the_architecture(wan_vae_params, wan_vae_cfg):
  got = loading.infer_config(wan_vae_params)
  for field in ("dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample"):
    assert getattr(got, field) == getattr(wan_vae_cfg, field)


def test_mismatches_are_listed_by_kind(original_sd, wan_vae_cfg):
  sd = dict(original_sd)
  del sd["decoder.head.2.bias"]
  sd["encoder.extra.weight"] = np.zeros(3, np.float32)
  sd["conv2.weight"] = np.zeros((16, 16, 3, 1, 1), np.float32)
  with pytest.raises(loading.WanVAECheckpointError) as info:
    loading.torch_state_dict_to_flax(sd, wan_vae_cfg)
  message = str(info.value)
  assert "1 missing key(s): decoder.head.2.bias" in message
  assert "1 unexpected key(s): encoder.extra.weight" in message
  assert "1 wrong shape key(s): conv2.weight (16, 16, 3, 1, 1) != (16, 16, 1, 1, 1)" in message


def test_a_checkpoint_for_another_width_is_rejected(original_sd):
  with pytest.raises(loading.WanVAECheckpointError, match="wrong shape"):
    loading.torch_state_dict_to_flax(original_sd, wan.WanVAEConfig())


def test_pth_files_load_without_running_pickled_code(tmp_path, original_sd, wan_vae_cfg,
                                                     wan_vae_params):
  torch = pytest.importorskip("torch")
  path = tmp_path / "Wan2.1_VAE.pth"
  torch.save({k: torch.from_numpy(v) for k, v in original_sd.items()}, path)
  params = convert_loading.load_wan_vae_params(path, wan_vae_cfg)
  for (_, a), (_, b) in zip(sorted(_leaves(params)), sorted(_leaves(wan_vae_params))):
    np.testing.assert_array_equal(a, b)
  evil = tmp_path / "evil.pth"
  torch.save({"x": _Unsafe()}, evil)
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="weights-only"):
    checkpoint_io.read_state_dict(evil)


def test_bfloat16_pth_keeps_its_dtype(tmp_path, original_sd, wan_vae_cfg):
  torch = pytest.importorskip("torch")
  path = tmp_path / "bf16.pth"
  torch.save({k: torch.from_numpy(v).bfloat16() for k, v in original_sd.items()}, path)
  params = convert_loading.load_wan_vae_params(path, wan_vae_cfg)
  assert str(params["conv1"]["kernel"].dtype) == "bfloat16"
  params32 = convert_loading.load_wan_vae_params(path, wan_vae_cfg, dtype=np.float32)
  assert params32["conv1"]["kernel"].dtype == np.float32


def test_directory_loading_reads_its_config(wan_vae_fixture_dir, wan_vae_params):
  params = convert_loading.load_wan_vae_params(wan_vae_fixture_dir)
  np.testing.assert_array_equal(params["conv2"]["kernel"], wan_vae_params["conv2"]["kernel"])
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="nope.pth: no such file"):
    checkpoint_io.read_state_dict(wan_vae_fixture_dir / "nope.pth")


class _Unsafe:
  """Stands for arbitrary pickled code; weights_only loading must refuse it."""


@pytest.mark.parametrize("cfg", [
    wan.WanVAEConfig(dim=4, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
                     temperal_downsample=(True, False), latents_mean=(0.0,) * 4,
                     latents_std=(1.0,) * 4),
    wan.WanVAEConfig(dim=4, num_res_blocks=3),
])
def test_the_flax_module_creates_exactly_the_table(cfg):
  params = wan.init_params(jax.random.PRNGKey(0), cfg)
  sd = loading.flax_to_torch_state_dict(params, cfg)  # strict: raises on any mismatch
  assert set(sd) == {e.original_key for e in loading.param_table(cfg)}
  inferred = loading.infer_config(params)
  assert (inferred.dim_mult, inferred.num_res_blocks, inferred.temperal_downsample) == (
      cfg.dim_mult, cfg.num_res_blocks, cfg.temperal_downsample)
