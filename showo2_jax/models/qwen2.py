"""Qwen2.5 decoder (the Show-o2 LLM, `showo` in the original's state_dict).

GQA with q/k/v bias, rotate-half RoPE, RMSNorm, SwiGLU MLP, tied or untied lm_head.
The attention mask is always given by the caller (the omni-attention mask), as in
the original's modified Qwen2; an optional preallocated KV cache makes prefill +
incremental decoding possible.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo2_jax.models import layers
from showo2_jax.models.config import Qwen2Config


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)), no biases (Qwen2 and flow-head MLPs)."""
  hidden_size: int
  intermediate_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = layers.default_kernel_init

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=self.kernel_init)
    gate = layers.dense(self.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = layers.dense(self.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
    h = nn.with_logical_constraint(layers.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    return layers.dense(self.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(h)


class Qwen2DecoderLayer(nn.Module):
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  @nn.compact
  def __call__(self, x, rope, mask, cache=None, cache_index=None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(x)
    a, new_cache = layers.GQAttention(
        c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=True, name="self_attn",
        attention_impl=self.attention_impl, attention_chunk_size=self.attention_chunk_size,
        **kw)(h, rope, mask, cache, cache_index)
    x = x + a
    h = layers.RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
    x = x + SwiGLU(c.hidden_size, c.intermediate_size, name="mlp", **kw)(h)
    return nn.with_logical_constraint(x, layers.ACT), new_cache


class Qwen2Model(nn.Module):
  """Embeddings, decoder layers and final norm (`showo.model.*`)."""
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  rope_inv_freq_dtype: str = "compute"   # see layers.rope_inv_freq_dtype
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.layers = layers.make_layer_stack(
        Qwen2DecoderLayer, c.num_layers, scan=self.scan_layers, remat=self.remat_policy,
        num_args=4, cache_argnum=2, config=c, attention_impl=self.attention_impl,
        attention_chunk_size=self.attention_chunk_size, **kw)
    self.norm = layers.RMSNorm(c.rms_norm_eps, **kw)
    self.inv_freq = layers.rope_inv_freq(
        c.head_dim, c.rope_theta, dtype=layers.rope_inv_freq_dtype(self.rope_inv_freq_dtype, self.dtype))

  def embed(self, tokens):
    return self.embed_tokens(tokens)

  def __call__(self, inputs_embeds, positions, mask, cache=None, cache_index=None):
    """Returns (final-norm hidden states, new cache)."""
    x = nn.with_logical_constraint(inputs_embeds.astype(self.dtype), layers.ACT)
    rope = layers.rope_cos_sin(positions, self.inv_freq, self.dtype)
    x, new_cache = layers.call_layer_stack(self.layers, x, rope, mask, cache, cache_index, cache_argnum=2)
    return self.norm(x), new_cache


class Qwen2ForCausalLM(nn.Module):
  """`showo`: Qwen2Model plus the (tied or untied) language-model head."""
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  rope_inv_freq_dtype: str = "compute"   # see layers.rope_inv_freq_dtype
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  def setup(self):
    c = self.config
    self.model = Qwen2Model(c, self.dtype, self.param_dtype, self.scan_layers, self.remat_policy,
                            self.rope_inv_freq_dtype, self.attention_impl, self.attention_chunk_size)
    if not c.tie_word_embeddings:
      self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), use_bias=False,
                                  dtype=self.dtype, param_dtype=self.param_dtype)

  def embed(self, tokens):
    return self.model.embed(tokens)

  def logits(self, hidden):
    if self.config.tie_word_embeddings:
      # Tied head: hidden @ embedding.T, fp32 accumulation, one rounding (as Linear).
      table = self.model.embed_tokens.embedding.astype(self.dtype)
      out = jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), table,
                       preferred_element_type=jnp.float32).astype(self.dtype)
    else:
      out = self.lm_head(hidden)
    return nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_vocab"))

  def __call__(self, tokens=None, positions=None, mask=None, *, inputs_embeds=None, cache=None,
               cache_index=None, return_logits=True):
    """Plain LM forward. Without a mask it is causal (as the original's lm_generate).

    Returns (logits or hidden, new_cache).
    """
    if inputs_embeds is None:
      inputs_embeds = self.embed(tokens)
    b, l = inputs_embeds.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if mask is None:
      kv_len = l if cache is None else cache.max_len
      mask = causal_mask(positions, kv_len)
    hidden, new_cache = self.model(inputs_embeds, positions, mask, cache, cache_index)
    return (self.logits(hidden) if return_logits else hidden), new_cache


def causal_mask(positions: jax.Array, kv_len: int) -> jax.Array:
  """(B, Lq, kv_len) bool: key slot j is visible to a query at position p iff j <= p."""
  return jnp.arange(kv_len)[None, None, :] <= positions[:, :, None]


def init_kv_cache(config: Qwen2Config, batch: int, max_len: int, dtype) -> layers.KVCache:
  """A zeroed `layers.KVCache` for `config.num_layers` layers: k, v of
  (num_layers, batch, max_len, num_kv_heads, head_dim) in `dtype` (scanned and
  unrolled stacks take the same layout). The flow head's config has the same
  fields, so `sample.prefix.new_caches` builds its cache here too."""
  return layers.KVCache.zeros(config.num_layers, batch, max_len, config.num_kv_heads,
                              config.head_dim, dtype)
