"""Tiny random Hugging Face models, saved locally (no hub access)."""
import pytest


@pytest.fixture(scope="session")
def tiny_qwen2_factory(tmp_path_factory):
  """save_pretrained directories of tiny random Qwen2ForCausalLM models."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")

  def make(tie: bool, dtype=None):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   tie_word_embeddings=tie, rope_theta=1e6)
    model = transformers.Qwen2ForCausalLM(cfg)
    if dtype is not None:
      model = model.to(dtype)
    path = tmp_path_factory.mktemp(f"qwen2_tie{int(tie)}")
    model.save_pretrained(path)
    return path, model
  return make


@pytest.fixture(scope="session")
def tiny_siglip_factory(tmp_path_factory):
  """save_pretrained directories of a tiny SiglipVisionModel or full SiglipModel."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                image_size=28, patch_size=14)

  def make(full: bool):
    torch.manual_seed(1)
    if full:
      cfg = transformers.SiglipConfig(vision_config=vision, text_config=dict(
          hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
          bos_token_id=1, eos_token_id=2, pad_token_id=0))
      model = transformers.SiglipModel(cfg)
    else:
      model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision))
    path = tmp_path_factory.mktemp("siglip_full" if full else "siglip_vision")
    model.save_pretrained(path)
    return path, model
  return make
