"""The SigLIP pixel tower (distillation teacher) against HF SiglipVisionModel."""
import numpy as np
import pytest

from showo2_jax.convert import hf

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=42, patch_size=14)


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True])
def test_tower_matches_hf_siglip(tmp_path, full):
  """Last hidden state (post-layernorm) and the hidden state at und_trans' depth
  (all layers but the last, no post-layernorm), from a SiglipVisionModel or a
  full SiglipModel directory (vision keys under `vision_model.`)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  if full:
    whole = transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION))
    whole.save_pretrained(tmp_path)
    model = whole.vision_model
  else:
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION))
    model.save_pretrained(tmp_path)
  model.eval()
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 42, 42)).astype(np.float32)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
  tower, params = hf.load_siglip_vision(str(tmp_path))
  assert tower.config.grid == 3 and tower.config.num_layers == 3
  last = tower.apply({"params": params}, pixels)
  np.testing.assert_allclose(np.asarray(last), out.last_hidden_state.numpy(), atol=1e-5, rtol=1e-5)
  mid = tower.apply({"params": params}, pixels, output_layer=2)
  np.testing.assert_allclose(np.asarray(mid), out.hidden_states[2].numpy(), atol=1e-5, rtol=1e-5)


def _write_tower(tmp_path, drop=()):
  """A tiny SigLIP vision directory written from a random tower through the key table."""
  import json  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from showo2_jax import param_mapping  # pylint: disable=import-outside-toplevel
  from showo2_jax.convert import checkpoint_io  # pylint: disable=import-outside-toplevel
  from showo2_jax.models import siglip_vision  # pylint: disable=import-outside-toplevel
  config = siglip_vision.SiglipVisionConfig.from_hf(dict(VISION))
  tower = siglip_vision.SiglipVisionTower(config)
  params = tower.init(jax.random.PRNGKey(3), np.zeros((1, 3, 42, 42), np.float32))["params"]
  flat = {k: np.asarray(getattr(v, "value", v)) for k, v in param_mapping.flatten(params).items()}
  sd = {}
  for path, value in flat.items():
    key, layout = hf.siglip_vision_key(path, "vision_model.")
    sd[key] = param_mapping.to_torch_layout(value, layout)
  sd["vision_model.head.probe"] = np.zeros((1, 1, 32), np.float32)   # pooling head: unused
  for k in drop:
    del sd[k]
  checkpoint_io.save_safetensors(sd, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(VISION))
  return flat


def test_tower_params_round_trip_through_the_key_table(tmp_path):
  flat = _write_tower(tmp_path)
  _, params = hf.load_siglip_vision(str(tmp_path))
  from showo2_jax import param_mapping  # pylint: disable=import-outside-toplevel
  got = param_mapping.flatten(params)
  assert set(got) == set(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_a_missing_tower_key_is_named(tmp_path):
  from showo2_jax import param_mapping  # pylint: disable=import-outside-toplevel
  _write_tower(tmp_path, drop=("vision_model.encoder.layers.1.mlp.fc2.weight",))
  with pytest.raises(param_mapping.KeyMismatchError, match=r"encoder\.layers\.1\.mlp\.fc2\.weight"):
    hf.load_siglip_vision(str(tmp_path))
