"""Semantic layers S: SigLIP vision-encoder blocks (minus the last), on VAE latents.

`und_trans` in the original: pre-LN transformer blocks, bidirectional attention,
gelu(tanh) MLP, fp32 LayerNorm, no final norm. The 2x2 patch embed on latents and
the (interpolated) SigLIP position table live in `showo2.py`. The attention core has
no mask; with the model's `attention_impl="chunked"` (models/attention.py) it runs
the same heads-major loop and FlashAttention-2 backward as the LLM's, otherwise
`dense`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import attention, layers
from showo2_jax.models.config import SiglipConfig


class SiglipAttention(nn.Module):
  config: SiglipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = attention.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, x):
    c = self.config
    b, l, d = x.shape
    hd = d // c.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = layers.dense(d, ("embed", "heads"), name="q_proj", **kw)(x).reshape(b, l, c.num_heads, hd)
    k = layers.dense(d, ("embed", "heads"), name="k_proj", **kw)(x).reshape(b, l, c.num_heads, hd)
    v = layers.dense(d, ("embed", "heads"), name="v_proj", **kw)(x).reshape(b, l, c.num_heads, hd)
    # `splash` stays `dense` here: an unmasked block has no empty blocks to skip, and
    # the kernel's TPU sharding is verified for the LLM and flow head only.
    impl = "chunked" if self.attention_impl == "chunked" else "dense"
    out = attention.attention(q, k, v, None, hd ** -0.5, impl=impl,
                              chunk_size=self.attention_chunk_size).reshape(b, l, d)
    return layers.dense(d, ("heads", "embed"), name="out_proj", **kw)(out)


class SiglipMLP(nn.Module):
  config: SiglipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(self.config.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
    h = layers.gelu(h, approximate=True)
    return layers.dense(self.config.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h)


class SiglipEncoderLayer(nn.Module):
  config: SiglipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "dense"
  attention_chunk_size: int = attention.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, x, unused=None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = SiglipAttention(c, name="self_attn", attention_impl=self.attention_impl,
                           attention_chunk_size=self.attention_chunk_size, **kw)
    x = x + attn(layers.LayerNorm(c.layer_norm_eps, name="layer_norm1", **kw)(x))
    x = x + SiglipMLP(c, name="mlp", **kw)(layers.LayerNorm(c.layer_norm_eps, name="layer_norm2", **kw)(x))
    return nn.with_logical_constraint(x, layers.ACT), None


class SiglipEncoder(nn.Module):
  """`und_trans`: `num_layers` SigLIP blocks, no post-layernorm."""
  config: SiglipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = attention.DEFAULT_CHUNK_SIZE

  def setup(self):
    self.layers = layers.make_layer_stack(
        SiglipEncoderLayer, self.config.num_layers, scan=self.scan_layers, remat=self.remat_policy,
        num_args=1, cache_argnum=0, config=self.config, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, attention_chunk_size=self.attention_chunk_size)

  def __call__(self, x):
    x, _ = layers.call_layer_stack(self.layers, x, None, cache_argnum=0)
    return x


# ------------------------------------------------------- position-table resampling
def _torch_cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch's upsample_bicubic2d kernel weights for the 4 taps around t in [0, 1)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):   # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix equal to torch F.interpolate(mode='bicubic', align_corners=False,
  antialias=False) along one axis: border indices clamped, A = -0.75."""
  scale = np.float32(in_size) / np.float32(out_size)
  m = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    src = (o + 0.5) * scale - 0.5
    i0 = int(np.floor(src))
    w = _torch_cubic_weights(np.float64(src - i0))
    for tap in range(4):
      m[o, min(max(i0 - 1 + tap, 0), in_size - 1)] += w[tap]
  return m.astype(np.float32)


def resize_position_table(table, grid: int, h: int, w: int):
  """(grid*grid, D) table -> (h*w, D), bicubic as the original (exact identity when
  (h, w) == (grid, grid)). Runs in the table's dtype, as the original."""
  if (h, w) == (grid, grid):
    return table
  d = table.shape[-1]
  t = table.reshape(grid, grid, d)
  mh = jnp.asarray(bicubic_matrix(grid, h), table.dtype)
  mw = jnp.asarray(bicubic_matrix(grid, w), table.dtype)
  out = jnp.einsum("ia,ab d->ibd".replace(" ", ""), mh, t)
  out = jnp.einsum("jb,ibd->ijd", mw, out)
  return out.reshape(h * w, d)
