"""The SigLIP pixel tower (distillation teacher) against HF SiglipVisionModel."""
import numpy as np
import pytest

from showo2_jax.convert import hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=42, patch_size=14)


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True])
def test_tower_matches_hf_siglip(tmp_path, full):
  """Last hidden state (post-layernorm) and the hidden state at und_trans' depth
  (all layers but the last, no post-layernorm), from a SiglipVisionModel or a
  full SiglipModel directory (vision keys under `vision_model.`)."""
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
