"""The one KV-cache pytree (`layers.KVCache`): scanned and unrolled stacks share its layout."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import layers, qwen2
from showo2_jax.models.config import Qwen2Config

CFG = Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8)


@functools.partial(jax.jit, static_argnums=0)
def _prefill_then_step(model, params, tokens):
  """Prefill 5 tokens, then one cached step: (logits (B, 6, V), final cache)."""
  cache = qwen2.init_kv_cache(CFG, 2, 8, jnp.float32)
  kw = {"params": params}
  first, cache = model.apply(kw, tokens[:, :5], jnp.broadcast_to(jnp.arange(5), (2, 5)), cache=cache,
                             cache_index=0)
  last, cache = model.apply(kw, tokens[:, 5:], jnp.full((2, 1), 5), cache=cache, cache_index=5)
  return jnp.concatenate([first, last], axis=1), cache


def test_scanned_and_unrolled_layers_fill_the_same_cache():
  """Prefill + a cached step give the same logits and the same cache in both stack
  kinds: one `KVCache` of (layers, B, S, Hkv, Dh), slots past the last write zero.
  (That cached steps equal the full forward: test_hf_parity, the sampler tests.)"""
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 6)))
  unrolled_model = qwen2.Qwen2ForCausalLM(CFG, scan_layers=False)
  shapes = nn.meta.unbox(jax.eval_shape(unrolled_model.init, jax.random.PRNGKey(0), tokens))["params"]
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), jnp.float32), shapes)
  model = dict(params["model"])
  per_layer = [model.pop(f"layers_{i}") for i in range(CFG.num_layers)]
  model["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)  # the scanned layout
  logits_u, unrolled = _prefill_then_step(unrolled_model, params, tokens)
  logits_s, scanned = _prefill_then_step(qwen2.Qwen2ForCausalLM(CFG, scan_layers=True),
                                         {**params, "model": model}, tokens)
  for cache in (unrolled, scanned):
    assert isinstance(cache, layers.KVCache) and cache.layer is None
    assert cache.k.shape == cache.v.shape == (2, 2, 8, 2, 8) and cache.max_len == 8
    assert np.any(np.asarray(cache.k[:, :, 5])) and not np.any(np.asarray(cache.k[:, :, 6:]))
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scanned.k, unrolled.k, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scanned.v, unrolled.v, rtol=1e-4, atol=1e-5)


def test_update_writes_one_layer_of_the_stacked_buffer():
  cache = layers.KVCache.zeros(3, 1, 5, 2, 4, jnp.bfloat16)
  k = jnp.ones((1, 2, 2, 4), jnp.float32)
  keys, values, new = cache.at_layer(1).update(k, 2 * k, jnp.asarray(3))
  assert keys.shape == (1, 5, 2, 4) and keys.dtype == jnp.bfloat16
  assert new.layer == 1 and new.k.shape == (3, 1, 5, 2, 4)
  written = np.zeros((3, 1, 5, 2, 4), np.float32)
  written[1, :, 3:5] = 1
  np.testing.assert_array_equal(np.asarray(new.k, np.float32), written)
  np.testing.assert_array_equal(np.asarray(new.v, np.float32), 2 * written)
  np.testing.assert_array_equal(np.asarray(values, np.float32), 2 * written[1])
