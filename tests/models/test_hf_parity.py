"""Our Qwen2 and SigLIP blocks against HF transformers models built from tiny random configs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from showo2_jax import param_mapping  # noqa: E402
from showo2_jax.convert import showo2_keys  # noqa: E402
from showo2_jax.models import qwen2, siglip  # noqa: E402
from showo2_jax.models.config import qwen2_config_from_hf, siglip_config_from_hf  # noqa: E402


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def subtree_params(module, prefix, torch_prefix, hf_state_dict, example_args):
  """Maps an HF state_dict onto a submodule through the Show-o2 key table."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_args))["params"]
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  flat = {f"{prefix}/{k}": tuple(v.shape) for k, v in param_mapping.flatten(nn.meta.unbox(shapes)).items()}
  sd = {torch_prefix + k: v.float().numpy() for k, v in hf_state_dict.items()}
  return showo2_keys.state_dict_to_params(sd, flat)[prefix.split("/")[0]]


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_matches_hf_qwen2_for_causal_lm(tied):
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen2Config(
      vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=8,
      num_key_value_heads=2, rope_theta=12345.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
      max_position_embeddings=128)
  hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():  # HF zero-initialises biases; make every weight non-trivial
      p.add_(torch.randn_like(p) * 0.02)
  cfg = qwen2_config_from_hf(hf_cfg.to_dict())
  model = qwen2.Qwen2ForCausalLM(cfg)
  tokens = np.random.default_rng(0).integers(0, 97, (2, 11))
  sd = {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
  params = subtree_params(model, "showo", "showo.", sd, (jnp.asarray(tokens),))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  ours, _ = model.apply({"params": params}, jnp.asarray(tokens))
  assert rel(ours, ref) < 1e-5

  # Prefill + KV-cached decoding gives the same logits as the full forward.
  cache = qwen2.init_kv_cache(cfg, 2, 16, jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  prefill, cache = model.apply({"params": params}, jnp.asarray(tokens[:, :8]), pos, cache=cache, cache_index=0)
  steps = [prefill]
  for i in range(8, 11):
    p = jnp.full((2, 1), i)
    out, cache = model.apply({"params": params}, jnp.asarray(tokens[:, i:i + 1]), p, cache=cache, cache_index=i)
    steps.append(out)
  assert rel(jnp.concatenate(steps, axis=1), ref) < 1e-5


def test_semantic_layers_match_hf_siglip_encoder_minus_last_layer():
  torch.manual_seed(0)
  hf_cfg = transformers.SiglipVisionConfig(
      hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, image_size=56,
      patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
  hf = transformers.SiglipVisionModel(hf_cfg).eval()
  cfg = siglip_config_from_hf(hf_cfg.to_dict())
  assert cfg.num_layers == 3 and cfg.position_grid == 4
  pixels = torch.randn(2, 3, 56, 56)
  with torch.no_grad():
    hidden = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
  x = jnp.asarray(hidden[0].numpy())
  encoder = siglip.SiglipEncoder(cfg)
  # transformers 5 drops the `vision_model.` prefix of older versions; accept both.
  encoder_sd = {k.removeprefix("vision_model.").removeprefix("encoder."): v for k, v in hf.state_dict().items()
                if ".layers." in k or k.startswith("encoder.layers.")}
  sd = {k: v for k, v in encoder_sd.items() if not k.startswith(f"layers.{cfg.num_layers}.")}
  params = subtree_params(encoder, "und_trans", "und_trans.", sd, (x,))
  ours = encoder.apply({"params": params}, x)
  assert rel(ours, hidden[cfg.num_layers].numpy()) < 1e-5
  # The `chunked` attention core (16 tokens in query chunks of 5, the last padded).
  chunked = siglip.SiglipEncoder(cfg, attention_impl="chunked", attention_chunk_size=5)
  assert rel(chunked.apply({"params": params}, x), hidden[cfg.num_layers].numpy()) < 1e-5


def test_position_table_resize_matches_torch_bicubic():
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  table = np.random.default_rng(0).standard_normal((27 * 27, 8)).astype(np.float32)
  for h, w in [(32, 32), (64, 64), (14, 20), (27, 27)]:
    ref = F.interpolate(torch.tensor(table).reshape(1, 27, 27, 8).permute(0, 3, 1, 2), size=(h, w),
                        mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(h * w, 8).numpy()
    ours = siglip.resize_position_table(jnp.asarray(table), 27, h, w)
    assert rel(ours, ref) < 1e-6, (h, w)
