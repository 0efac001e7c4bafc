"""The bf16 switches: RoPE `inv_freq` rounding (the original's quirk) and one way to ask
for bf16 in `load_original`."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.convert.showo2_torch import load_original
from showo2_jax.models import layers, showo2 as s2
from showo2_jax.models.config import ConfigError, RopeScaling, Showo2Config


def test_inv_freq_rounded_as_torch_module_to_bfloat16():
  """`model.to(torch.bfloat16)` rounds HF's inv_freq buffers; "compute" does the same."""
  import torch  # pylint: disable=import-outside-toplevel  (here, not at collection)
  import transformers  # pylint: disable=import-outside-toplevel
  cfg = transformers.Qwen2Config(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=64, num_hidden_layers=1, vocab_size=32,
                                 rope_theta=1e6)
  rotary = transformers.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding(config=cfg)
  exact = rotary.inv_freq.numpy()
  rounded = rotary.to(torch.bfloat16).inv_freq.float().numpy()
  assert not np.array_equal(exact, rounded)
  dt = layers.rope_inv_freq_dtype("compute", jnp.bfloat16)
  np.testing.assert_array_equal(layers.rope_inv_freq(128, 1e6, dtype=dt), rounded)
  np.testing.assert_allclose(  # exact up to one fp32 ulp of torch's pow
      layers.rope_inv_freq(128, 1e6, dtype=layers.rope_inv_freq_dtype("float32", jnp.bfloat16)), exact,
      rtol=2e-7)
  # llama3-scaled frequencies of the flow head: rounded after the scaling, as the buffer is.
  scaled = layers.rope_inv_freq(64, 5e5, RopeScaling())
  np.testing.assert_array_equal(layers.rope_inv_freq(64, 5e5, RopeScaling(), dtype=jnp.bfloat16),
                                scaled.astype(jnp.bfloat16).astype(np.float32))
  # fp32 compute: both settings are the exact frequencies.
  assert layers.rope_inv_freq_dtype("compute", jnp.float32) == jnp.float32
  with pytest.raises(ValueError, match="rope_inv_freq_dtype"):
    layers.rope_inv_freq_dtype("bf16", jnp.bfloat16)
  with pytest.raises(ConfigError, match="rope_inv_freq_dtype"):
    Showo2Config(rope_inv_freq_dtype="bfloat16")


def _run(config, params, tokens, latents, mp):
  model = s2.Showo2(config)
  return model.apply({"params": params}, tokens, latents, jnp.full((1,), 0.5), mp)


@pytest.mark.slow
def test_rope_switch_changes_bf16_only(showo2_fixture_dir):
  base, params = load_original(str(showo2_fixture_dir))
  params = jax.tree.map(jnp.asarray, params)
  rng = np.random.default_rng(0)
  n = (base.image_latent_height * base.image_latent_width)
  length = n + 40
  tokens = jnp.asarray(rng.integers(10, 100, (1, length)), jnp.int32)
  hw = (base.image_latent_height * base.patch_size, base.image_latent_width * base.patch_size)
  latents = jnp.asarray(rng.standard_normal((1, base.latent_channels) + hw), jnp.float32)
  mp = jnp.asarray([[[20, n + 1]]], jnp.int32)
  # positions far enough that bf16-rounded frequencies move the angles
  outs = {}
  for dtype in ("float32", "bfloat16"):
    for rope in ("float32", "compute"):
      cfg = base.replace(dtype=dtype, param_dtype="float32", rope_inv_freq_dtype=rope)
      outs[dtype, rope] = _run(cfg, params, tokens, latents, mp)
  for k in ("logits", "v_tok"):
    np.testing.assert_array_equal(np.asarray(outs["float32", "float32"][k]),
                                  np.asarray(outs["float32", "compute"][k]))
    a = np.asarray(outs["bfloat16", "float32"][k], np.float32)
    b = np.asarray(outs["bfloat16", "compute"][k], np.float32)
    assert not np.array_equal(a, b), k


@pytest.mark.slow
def test_load_original_dtype_sets_params_and_compute(showo2_fixture_dir):
  path = str(showo2_fixture_dir)
  cfg, params = load_original(path, dtype="bfloat16")
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "bfloat16")
  assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
  cfg, params = load_original(path, dtype=jnp.bfloat16, param_dtype="float32", scan_layers=True)
  assert (cfg.dtype, cfg.param_dtype, cfg.scan_layers) == ("bfloat16", "float32", True)
  assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  cfg, params = load_original(path)   # as stored (fp32 fixture), fp32 compute
  assert (cfg.dtype, cfg.param_dtype) == ("float32", "float32")
  assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  cfg2, _ = load_original(path, config=dataclasses.replace(cfg, scan_layers=True), dtype="bfloat16")
  assert (cfg2.dtype, cfg2.scan_layers) == ("bfloat16", True)
  with pytest.raises(ValueError, match="dtype"):
    load_original(path, dtype="int8")
