"""PyTorch -> Orbax -> PyTorch is bit-exact on the shipped fixtures."""
import json
import os

import ml_dtypes
import numpy as np
import pytest

from showo2_jax.convert import checkpoint_io, orbax_io, pipeline, verify

from convert_helpers import assert_same_tensors, copy_fixture, read_all


def _round_trip(src, tmp_path, **to_orbax):
  ox, pt = tmp_path / "orbax", tmp_path / "torch"
  to_torch = {k: to_orbax.pop(k) for k in ("max_shard_size", "out_dtype") if k in to_orbax}
  pipeline.to_orbax(str(src), str(ox), **to_orbax)
  if "out_dtype" in to_torch:
    to_torch["dtype"] = to_torch.pop("out_dtype")
  pipeline.to_torch(str(ox), str(pt), **to_torch)
  return ox, pt


def test_showo2_fixture_round_trip_is_bit_exact(showo2_fixture_dir, tmp_path):
  ox, pt = _round_trip(showo2_fixture_dir, tmp_path)
  assert_same_tensors(showo2_fixture_dir, pt)
  assert sorted(os.listdir(pt)) == ["config.json", "llm", "llm_config.json", "pytorch_model.bin",
                                    "siglip_config.json"]
  for name in ("llm_config.json", "siglip_config.json"):  # written back verbatim
    assert (pt / name).read_text() == (showo2_fixture_dir / name).read_text()
  # config.json too, plus the paths the original's constructor reads (tests/convert/
  # test_original_loads.py).
  top, source = (json.loads((d / "config.json").read_text()) for d in (pt, showo2_fixture_dir))
  assert {k: v for k, v in top.items() if k in source and k != "load_from_showo"} == \
      {k: v for k, v in source.items() if k != "load_from_showo"}
  assert top["llm_model_path"] == str(pt / "llm") and top["load_from_showo"] is True
  # The Orbax checkpoint alone rebuilds the model config.
  kind, config, params = orbax_io.restore_params(str(ox))
  assert kind == "showo2" and config.llm.vocab_size == 312 and not config.scan_layers
  assert params["showo"]["model"]["embed_tokens"]["embedding"].shape == (312, 64)
  assert verify.verify(str(showo2_fixture_dir), str(ox)).ok


def test_scanned_layers_and_sharded_output(showo2_fixture_dir, tmp_path):
  ox, pt = _round_trip(showo2_fixture_dir, tmp_path, scan_layers=True, chunk_bytes=100_000,
                       max_shard_size=200_000)
  kind, config, params = orbax_io.restore_params(str(ox))
  assert config.scan_layers
  assert params["showo"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 64, 64)
  files = sorted(os.listdir(pt))
  shards = [f for f in files if f.startswith("pytorch_model-")]
  assert len(shards) > 1 and shards[0] == f"pytorch_model-00001-of-{len(shards):05d}.bin"
  for index in ("diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json"):
    weight_map = json.loads((pt / index).read_text())["weight_map"]
    assert set(weight_map.values()) == set(shards)
    assert len(weight_map) == 110
  for shard in shards:
    assert os.path.getsize(pt / shard) < 200_000 + 90_000  # < one tensor over, plus torch's zip
  assert_same_tensors(showo2_fixture_dir, pt)


def test_bf16_round_trip_is_exact(showo2_fixture_dir, tmp_path):
  to_bf16 = lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
  src = copy_fixture(showo2_fixture_dir, tmp_path / "bf16", transform=to_bf16)
  ox, pt = _round_trip(src, tmp_path)
  assert {v[0] for v in read_all(pt).values()} == {"bfloat16"}
  assert_same_tensors(src, pt)
  _, _, params = orbax_io.restore_params(str(ox))
  assert params["fusion_proj"]["fc1"]["kernel"].dtype == ml_dtypes.bfloat16


def test_dtype_cast(showo2_fixture_dir, tmp_path):
  ox, pt = _round_trip(showo2_fixture_dir, tmp_path, dtype="bfloat16")
  out = read_all(pt)
  assert {v[0] for v in out.values()} == {"bfloat16"}  # to-torch keeps the stored dtype
  report = verify.verify(str(showo2_fixture_dir), str(ox))
  assert report.ok and report.casts[("float32", "bfloat16")] == 110
  pipeline.to_torch(str(ox), str(tmp_path / "fp32"), dtype="source")
  with checkpoint_io.StateDict(str(tmp_path / "fp32")) as a, \
       checkpoint_io.StateDict(str(showo2_fixture_dir)) as b:
    k = "fusion_proj.1.weight"
    assert a[k].dtype == np.float32
    np.testing.assert_array_equal(a[k], b[k].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("drop", ["showo.lm_head.weight", "showo.model.embed_tokens.weight"])
def test_tied_head_stored_either_way(showo2_fixture_dir, tmp_path, drop):
  """Tied embeddings: a file with both names, only the embedding, or only the head."""
  src = copy_fixture(showo2_fixture_dir, tmp_path / "src", drop=[drop])
  ox, pt = _round_trip(src, tmp_path)
  assert_same_tensors(src, pt)  # the round trip reproduces the source's key set
  assert verify.verify(str(src), str(ox)).ok


def test_untied_head(showo2_fixture_dir, tmp_path):
  """As the 7B model: lm_head is its own (transposed) parameter."""
  def untie(t):
    t["showo.lm_head.weight"] = t["showo.lm_head.weight"][::-1].copy()
    return t
  src = copy_fixture(showo2_fixture_dir, tmp_path / "src", transform=untie)
  llm = json.loads((src / "llm_config.json").read_text())
  (src / "llm_config.json").write_text(json.dumps(dict(llm, tie_word_embeddings=False)))
  ox, pt = _round_trip(src, tmp_path)
  _, config, params = orbax_io.restore_params(str(ox))
  assert not config.llm.tie_word_embeddings
  with checkpoint_io.StateDict(str(src)) as sd:
    np.testing.assert_array_equal(params["showo"]["lm_head"]["kernel"], sd["showo.lm_head.weight"].T)
  assert_same_tensors(src, pt)


def test_trained_checkpoint_writes_tied_head(showo2_fixture_dir, tmp_path):
  """Without a recorded source, to-torch writes what the original's state_dict has."""
  _, config, params = orbax_io.restore_params(str(_round_trip(showo2_fixture_dir, tmp_path)[0]))
  orbax_io.save_params(str(tmp_path / "trained"), params, config)
  pipeline.to_torch(str(tmp_path / "trained"), str(tmp_path / "out"))
  assert_same_tensors(showo2_fixture_dir, tmp_path / "out")
  top = json.loads((tmp_path / "out" / "config.json").read_text())
  assert top["llm_vocab_size"] == 312 and top["num_diffusion_layers"] == 2


def test_pytorch_bin_source(showo2_fixture_dir, tmp_path):
  torch = pytest.importorskip("torch")
  src = tmp_path / "bin"
  src.mkdir()
  for name in ("config.json", "llm_config.json", "siglip_config.json"):
    (src / name).write_text((showo2_fixture_dir / name).read_text())
  with checkpoint_io.StateDict(str(showo2_fixture_dir)) as sd:
    torch.save({k: torch.from_numpy(np.array(sd[k])) for k in sd.keys()}, src / "pytorch_model.bin")
  ox, pt = _round_trip(src, tmp_path)
  assert_same_tensors(src, pt)


def test_wan_vae_round_trip(wan_vae_fixture_dir, tmp_path):
  pytest.importorskip("showo2_jax.vae.loading")
  ox, pt = _round_trip(wan_vae_fixture_dir, tmp_path)
  assert sorted(os.listdir(pt)) == ["config.json", "model.safetensors"]
  assert_same_tensors(wan_vae_fixture_dir, pt)
  kind, config, params = orbax_io.restore_params(str(ox))
  assert kind == "wan_vae" and config.dim == 8
  assert verify.verify(str(wan_vae_fixture_dir), str(ox)).ok


def test_wan_vae_pth_round_trip(wan_vae_fixture_dir, tmp_path):
  pytest.importorskip("showo2_jax.vae.loading")
  torch = pytest.importorskip("torch")
  with checkpoint_io.StateDict(str(wan_vae_fixture_dir)) as sd:
    tensors = {k: torch.from_numpy(np.array(sd[k])).to(torch.bfloat16) for k in sd.keys()}
  pth = tmp_path / "src" / "Wan2.1_VAE.pth"
  pth.parent.mkdir()
  torch.save(tensors, pth)
  (pth.parent / "config.json").write_text((wan_vae_fixture_dir / "config.json").read_text())
  ox, pt = _round_trip(pth, tmp_path)  # detected from the key names
  assert sorted(os.listdir(pt)) == ["Wan2.1_VAE.pth", "config.json"]
  assert_same_tensors(pth, pt / "Wan2.1_VAE.pth")


@pytest.mark.slow
def test_wan_vae_diffusers_layout_round_trip(tmp_path):
  pytest.importorskip("showo2_jax.vae.loading")
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  model = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                     attn_scales=[], temperal_downsample=[False, True, True])
  src = tmp_path / "diffusers_vae"
  model.save_pretrained(src)
  ox, pt = _round_trip(src, tmp_path)
  _, config, _ = orbax_io.restore_params(str(ox))
  assert config.dim == 8
  assert_same_tensors(src, pt)
  assert verify.verify(str(src), str(ox)).ok
