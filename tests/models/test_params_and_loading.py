"""Param trees at full size, and loading the original's state_dicts (errors included)."""
import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from showo2_jax import config_lib
from showo2_jax import param_mapping
from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.convert.showo2_torch import abstract_params, load_original
from showo2_jax.models.config import ConfigError, Showo2Config

# Counts of the released checkpoints, from the shapes of their state_dicts (spec 1.8/9.1).
RELEASED_PARAM_COUNTS = {"showo2_1p5b": 2_830_777_056, "showo2_7b": 8_932_118_752}
LLM_PARAM_COUNTS = {"showo2_1p5b": 1_543_304_192, "showo2_7b": 7_612_785_152}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RELEASED_PARAM_COUNTS))
def test_full_size_param_counts_match_the_released_checkpoints(name):
  cfg = Showo2Config.from_config_dict(config_lib.load_config(name).model)
  boxed = abstract_params(cfg)
  params = nn.meta.unbox(boxed)
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  assert count(params) == RELEASED_PARAM_COUNTS[name]
  assert count(params["showo"]) == LLM_PARAM_COUNTS[name]
  # Every parameter carries logical axis names, one per dimension.
  specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  leaves = jax.tree.leaves(params)
  assert len(specs) == len(leaves)
  assert all(len(s) == len(x.shape) for s, x in zip(specs, leaves))
  # And every one has a key in the original's state_dict.
  keys = {showo2_keys.torch_key(p)[0] for p in param_mapping.flatten(params)}
  assert len(keys) == len(leaves)


def test_state_dict_round_trip_through_the_key_table(showo2_fixture_dir):
  config, params = load_original(str(showo2_fixture_dir))
  sd = showo2_keys.params_to_state_dict(params)
  with checkpoint_io.StateDict(str(showo2_fixture_dir / "model.safetensors")) as ref:
    assert set(sd) == set(ref.keys()) | {"showo.lm_head.weight"}
    for k in ref.keys():
      np.testing.assert_array_equal(sd[k], ref[k])


def _copy_fixture(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_missing_unexpected_and_wrong_shape_keys_are_all_listed(showo2_fixture_dir, tmp_path):
  d = _copy_fixture(showo2_fixture_dir, tmp_path / "ckpt")
  with checkpoint_io.StateDict(str(d / "model.safetensors")) as sd:
    tensors = {k: np.array(v) for k, v in sd.items()}
  del tensors["fusion_proj.1.bias"]
  tensors["something.extra"] = np.zeros(3, np.float32)
  tensors["time_embed.mlp.0.bias"] = np.zeros(5, np.float32)
  checkpoint_io.save_safetensors(tensors, str(d / "model.safetensors"))
  with pytest.raises(param_mapping.KeyMismatchError) as e:
    load_original(str(d))
  msg = str(e.value)
  assert "fusion_proj.1.bias" in msg and "something.extra" in msg and "time_embed.mlp.0.bias (5,)" in msg


def test_sharded_safetensors_with_index_and_torch_bin_load_identically(showo2_fixture_dir, tmp_path):
  torch = pytest.importorskip("torch")
  _, ref = load_original(str(showo2_fixture_dir))
  with checkpoint_io.StateDict(str(showo2_fixture_dir / "model.safetensors")) as sd:
    tensors = {k: np.array(v) for k, v in sd.items()}
  keys = sorted(tensors)
  sharded = _copy_fixture(showo2_fixture_dir, tmp_path / "sharded")
  (sharded / "model.safetensors").unlink()
  weight_map = {}
  for i, chunk in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
    name = f"model-{i + 1:05d}-of-00002.safetensors"
    checkpoint_io.save_safetensors({k: tensors[k] for k in chunk}, str(sharded / name))
    weight_map.update({k: name for k in chunk})
  (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  binary = _copy_fixture(showo2_fixture_dir, tmp_path / "bin")
  (binary / "model.safetensors").unlink()
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items() if k != "showo.lm_head.weight"},
             binary / "pytorch_model.bin")
  for d in (sharded, binary):
    _, params = load_original(str(d))
    jax.tree.map(np.testing.assert_array_equal, params, ref)


def test_lm_head_alone_stands_in_for_tied_embeddings(showo2_fixture_dir, tmp_path):
  d = _copy_fixture(showo2_fixture_dir, tmp_path / "ckpt")
  with checkpoint_io.StateDict(str(d / "model.safetensors")) as sd:
    tensors = {k: np.array(v) for k, v in sd.items()}
  tensors["showo.lm_head.weight"] = tensors.pop("showo.model.embed_tokens.weight")
  checkpoint_io.save_safetensors(tensors, str(d / "model.safetensors"))
  _, params = load_original(str(d))
  np.testing.assert_array_equal(params["showo"]["model"]["embed_tokens"]["embedding"], tensors["showo.lm_head.weight"])


def test_bad_paths_and_configs_fail_clearly(tmp_path):
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="no such file"):
    checkpoint_io.StateDict(str(tmp_path / "nope"))
  (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00abcde")
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="not a valid safetensors"):
    checkpoint_io.StateDict(str(tmp_path / "junk.safetensors"))
  with pytest.raises(ConfigError, match="no config.json"):
    load_original(str(tmp_path))
  with pytest.raises(config_lib.UnknownConfigError, match="unknown config 'nonexistent'"):
    config_lib.load_config("nonexistent")
  cfg = config_lib.load_config("tiny")
  cfg.model.llm.hiden_size = 3
  with pytest.raises(ConfigError, match="hiden_size"):
    Showo2Config.from_config_dict(cfg.model)
