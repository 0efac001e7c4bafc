"""Flow head: timestep embedder and DiT-style adaLN-Zero blocks predicting velocity.

`diffusion_head_a` (N ModulatedAttentionBlocks) and `diffusion_head_b` (FinalLayer)
in the original. Modulation is per image slot and applied only at the positions of
that slot's visual block (time token included); everywhere else it is the identity
(shift 0, scale 0, gate 1). Instead of materialising six (B, L, Dh) maps per block as
the original does, each position carries a slot index (-1 = none) and the block
gathers its slot's vectors.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo2_jax.models import layers
from showo2_jax.models.config import FlowHeadConfig
from showo2_jax.models.qwen2 import SwiGLU


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """cos-first sinusoid of raw t in [0, 1] (not scaled by 1000), fp32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """`time_embed`: sinusoid(256) -> Linear -> SiLU -> Linear (width Dh)."""
  hidden_size: int
  frequency_dim: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    # Weights N(0, 0.02) (the original's DiT init); biases PyTorch's default.
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(0.02),
              bias_init=layers.TORCH_LINEAR_BIAS)
    x = timestep_sinusoid(t, self.frequency_dim).astype(self.dtype)
    x = layers.dense(self.hidden_size, ("freq", "embed"), name="mlp_0", **kw)(x)
    return layers.dense(self.hidden_size, ("embed", "embed_out"), name="mlp_2", **kw)(layers.silu(x))


def gather_modulation(mod: jax.Array, slot_index: jax.Array, identity: jax.Array) -> jax.Array:
  """Per-position modulation vectors.

  mod (B, M, F) per slot; slot_index (B, L) in [-1, M); identity (F,) used where
  slot_index == -1. Returns (B, L, F) in fp32.
  """
  picked = jnp.take_along_axis(mod, jnp.maximum(slot_index, 0)[..., None], axis=1)
  return jnp.where(slot_index[..., None] >= 0, picked.astype(jnp.float32), identity.astype(jnp.float32))


def modulate(x, shift, scale):
  """x * (1 + scale) + shift in fp32, cast back to x's dtype (spec 2.1)."""
  return (x.astype(jnp.float32) * (1 + scale) + shift).astype(x.dtype)


class ModulatedAttentionBlock(nn.Module):
  """adaLN-Zero block: 6-way modulation from the (unprojected) time embedding."""
  config: FlowHeadConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  @nn.compact
  def __call__(self, x, cond, slot_index, rope, mask, cache=None, cache_index=None):
    """x (B, L, Dh); cond (B, M, Dh) time embedding per slot; slot_index (B, L)."""
    c = self.config
    d = c.hidden_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mod = layers.dense(6 * d, ("embed", "mlp"), name="adaLN_modulation",
                       kernel_init=nn.initializers.zeros, **kw)(layers.silu(cond))
    identity = jnp.concatenate([jnp.zeros((2 * d,)), jnp.ones((d,)), jnp.zeros((2 * d,)), jnp.ones((d,))])
    m = gather_modulation(mod, slot_index, identity)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(m, 6, axis=-1)
    h = layers.RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(x)
    a, new_cache = layers.GQAttention(
        d, c.num_heads, c.num_kv_heads, c.head_dim, qk_norm_eps=c.qk_norm_eps, name="self_attn",
        kernel_init=layers.torch_linear_kernel_init, attention_impl=self.attention_impl,
        attention_chunk_size=self.attention_chunk_size, **kw)(modulate(h, shift_msa, scale_msa), rope,
                                                              mask, cache, cache_index)
    x = x + (gate_msa * a).astype(x.dtype)
    h = layers.RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
    mlp = SwiGLU(d, c.intermediate_size, name="mlp", kernel_init=layers.torch_linear_kernel_init,
                 **kw)(modulate(h, shift_mlp, scale_mlp))
    x = x + (gate_mlp * mlp).astype(x.dtype)
    return nn.with_logical_constraint(x, layers.ACT), new_cache


class FinalLayer(nn.Module):
  """`diffusion_head_b`: RMSNorm(1e-6), 2-way modulation, Linear -> p*p*C."""
  config: FlowHeadConfig
  out_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, slot_index):
    d = self.config.hidden_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mod = layers.dense(2 * d, ("embed", "mlp"), name="adaLN_modulation",
                       kernel_init=nn.initializers.zeros, **kw)(layers.silu(cond))
    shift, scale = jnp.split(gather_modulation(mod, slot_index, jnp.zeros((2 * d,))), 2, axis=-1)
    h = layers.RMSNorm(self.config.final_norm_eps, name="norm_final", **kw)(x)
    return layers.dense(self.out_dim, ("embed", "patch"), name="linear",
                        kernel_init=nn.initializers.zeros, **kw)(modulate(h, shift, scale))


class FlowHead(nn.Module):
  """The N modulated blocks (`diffusion_head_a`), stacked or scanned."""
  config: FlowHeadConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  rope_inv_freq_dtype: str = "compute"   # see layers.rope_inv_freq_dtype
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  def setup(self):
    c = self.config
    self.layers = layers.make_layer_stack(
        ModulatedAttentionBlock, c.num_layers, scan=self.scan_layers, remat=self.remat_policy,
        num_args=6, cache_argnum=4, config=c, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, attention_chunk_size=self.attention_chunk_size)
    self.inv_freq = layers.rope_inv_freq(
        c.head_dim, c.rope_theta, c.rope_scaling,
        dtype=layers.rope_inv_freq_dtype(self.rope_inv_freq_dtype, self.dtype))

  def __call__(self, x, cond, slot_index, positions, mask, cache=None, cache_index=None):
    rope = layers.rope_cos_sin(positions, self.inv_freq, self.dtype)
    return layers.call_layer_stack(self.layers, x, cond, slot_index, rope, mask, cache, cache_index,
                                   cache_argnum=4)
