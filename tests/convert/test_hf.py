"""Qwen2.5 and SigLIP Hugging Face checkpoints (tiny random models, built locally)."""
import json
import os

import flax.linen as nn
import numpy as np
import pytest

from showo2_jax import param_mapping
from showo2_jax.convert import orbax_io, pipeline, showo2_torch, sources, verify
from showo2_jax.models.config import Showo2Config

from convert_helpers import assert_same_tensors


def _torch_np(t):
  return t.detach().float().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_qwen2_round_trip_loads_in_transformers(tiny_qwen2_factory, tmp_path, tie):
  transformers = pytest.importorskip("transformers")
  src, model = tiny_qwen2_factory(tie)
  assert sources.detect_kind(str(src)) == "qwen2"
  ox, pt = tmp_path / "ox", tmp_path / "pt"
  pipeline.to_orbax(str(src), str(ox))
  pipeline.to_torch(str(ox), str(pt))
  assert_same_tensors(src / "model.safetensors", pt / "model.safetensors")
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(str(pt))
  for k, v in model.state_dict().items():
    np.testing.assert_array_equal(_torch_np(reloaded.state_dict()[k]), _torch_np(v), err_msg=k)
  kind, config, params = orbax_io.load_partial(str(ox))
  assert kind == "qwen2" and config["tie_word_embeddings"] == tie
  assert set(params) == {"showo"}
  # The subtree drops into a full Show-o2 init of the same LLM: same paths, same shapes.
  full = Showo2Config(llm=orbax_io.config_from_dict("qwen2", config))
  want = param_mapping.flatten(nn.meta.unbox(showo2_torch.abstract_params(full))["showo"])
  got = param_mapping.flatten(params["showo"])
  assert {k: tuple(v.shape) for k, v in want.items()} == {k: v.shape for k, v in got.items()}
  np.testing.assert_array_equal(got["model/layers_1/mlp/up_proj/kernel"],
                                _torch_np(model.model.layers[1].mlp.up_proj.weight).T)


@pytest.mark.slow
def test_qwen2_bf16_and_resize_vocab(tiny_qwen2_factory, tmp_path):
  torch = pytest.importorskip("torch")
  src, model = tiny_qwen2_factory(False, torch.bfloat16)
  ox, pt = tmp_path / "ox", tmp_path / "pt"
  pipeline.to_orbax(str(src), str(ox), resize_vocab=80)
  _, config, params = orbax_io.load_partial(str(ox))
  assert config["vocab_size"] == 80
  emb = params["showo"]["model"]["embed_tokens"]["embedding"]
  assert emb.shape == (80, 32) and emb.dtype.name == "bfloat16"
  np.testing.assert_array_equal(emb.astype(np.float32), _torch_np(model.model.embed_tokens.weight)[:80])
  assert params["showo"]["lm_head"]["kernel"].shape == (32, 80)
  assert verify.verify(str(src), str(ox)).ok  # compared against the first 80 rows
  pipeline.to_torch(str(ox), str(pt))
  assert json.loads((pt / "config.json").read_text())["vocab_size"] == 80


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True])
def test_siglip_to_semantic_layers(tiny_siglip_factory, tmp_path, full):
  src, model = tiny_siglip_factory(full)
  assert sources.detect_kind(str(src)) == "siglip"
  ox = tmp_path / "ox"
  pipeline.to_orbax(str(src), str(ox))
  kind, config, params = orbax_io.load_partial(str(ox))
  assert kind == "siglip" and config["num_layers"] == 2  # the last SigLIP layer is dropped
  assert set(params) == {"und_trans", "position_embedding"}
  assert set(params["und_trans"]) == {"layers_0", "layers_1"}
  vision = model.vision_model if full else model  # transformers 5 flattened SiglipVisionModel
  np.testing.assert_array_equal(params["position_embedding"]["embedding"],
                                _torch_np(vision.embeddings.position_embedding.weight))
  np.testing.assert_array_equal(params["und_trans"]["layers_1"]["self_attn"]["out_proj"]["kernel"],
                                _torch_np(vision.encoder.layers[1].self_attn.out_proj.weight).T)
  report = verify.verify(str(src), str(ox))
  assert report.ok and report.exact == report.compared == 2 * 16 + 1
  assert report.ignored > 0  # patch embedding, last layer, post-layernorm, head (and text tower)
  pt = tmp_path / "pt"
  pipeline.to_torch(str(ox), str(pt))  # the kept tensors, with the source's key names
  with open(pt / "config.json") as f:
    assert json.load(f)["model_type"] in ("siglip", "siglip_vision_model")
  assert verify.verify(str(pt), str(ox)).ok


def test_qwen2_scanned_init_matches_scanned_model(tiny_qwen2_factory, tmp_path):
  src, _ = tiny_qwen2_factory(True)
  ox = tmp_path / "ox"
  pipeline.to_orbax(str(src), str(ox), scan_layers=True)
  _, config, params = orbax_io.load_partial(str(ox))
  full = Showo2Config(llm=orbax_io.config_from_dict("qwen2", config), scan_layers=True)
  want = param_mapping.flatten(nn.meta.unbox(showo2_torch.abstract_params(full))["showo"])
  got = param_mapping.flatten(params["showo"])
  assert {k: tuple(v.shape) for k, v in want.items()} == {k: v.shape for k, v in got.items()}
  assert os.path.exists(ox / orbax_io.SIDECAR)
