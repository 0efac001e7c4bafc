"""Building blocks shared by the LLM, the semantic layers and the flow head.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`);
`showo2_jax.sharding` maps them to mesh axes. Numerics follow the PyTorch original
(spec 2.6): norms compute in float32 and cast back *before* the weight multiply.
In bf16 they round where PyTorch's bf16 kernels do: matmuls (Dense, attention)
accumulate in float32, a bias is added in float32, activations compute in float32,
and each rounds once to the compute dtype; attention scores and softmax stay fp32.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from showo2_jax.models import fsdp_matmul

Dtype = Any

default_kernel_init = nn.initializers.lecun_normal()

# PyTorch's nn.Linear default init, kaiming_uniform_(a=sqrt(5)): weight and bias
# ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The original relies on it for the layers
# Show-o2 adds and stage 1 trains from scratch (fusion_proj, diff_proj,
# time_embed_proj, the flow head's attention and MLP; spec 7.2 "fresh-init
# facts": its Xavier re-init is a no-op), so ours start from the same law.
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Pass as `bias_init`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in read from the input.
TORCH_LINEAR_BIAS = "torch_linear_bias"
# Logical axes of a (B, L, D) hidden state between blocks (sharding.LOGICAL_AXIS_RULES).
ACT = ("activation_batch", "activation_length", "activation_embed")


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: Optional[str] = None,
          kernel_init=default_kernel_init, bias_init=nn.initializers.zeros) -> "Dense":
  """A Dense whose kernel (in, out) and bias (out,) carry logical axis names."""
  return Dense(features, axes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
               kernel_init=kernel_init, bias_init=bias_init)


class Dense(nn.Module):
  """y = x @ kernel + bias, rounded to `dtype` once.

  The matmul accumulates in float32 and the bias is added in float32 before the
  single cast, as PyTorch's Linear does in bf16 (addmm: fp32 accumulator, bias in
  the epilogue). Params (and names) are those of `flax.linen.Dense`: kernel
  (in, features) with logical axes `axes`, bias (features,). Params are cast to
  `dtype` first, so fp32 master weights compute exactly as a bf16 copy would.
  """
  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (x.shape[-1], self.features), self.param_dtype)
    # Under FSDP the kernel's gradient is reduce-scattered, not all-reduced (fsdp_matmul.py).
    y = fsdp_matmul.matmul(x, kernel, self.dtype, self.axes)
    if self.use_bias:
      bias_init = self.bias_init
      if isinstance(bias_init, str) and bias_init == TORCH_LINEAR_BIAS:
        bound = 1.0 / np.sqrt(x.shape[-1])
        bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
      bias = self.param("bias", nn.with_logical_partitioning(bias_init, (self.axes[1],)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype).astype(jnp.float32)
    return y.astype(self.dtype)


def silu(x: jax.Array) -> jax.Array:
  """x * sigmoid(x) computed in float32, rounded once to x's dtype (as torch's SiLU)."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.nn.sigmoid(x32)).astype(x.dtype)


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
  """GELU (erf, or tanh when `approximate`) in float32, rounded once to x's dtype."""
  return jax.nn.gelu(x.astype(jnp.float32), approximate=approximate).astype(x.dtype)


class RMSNorm(nn.Module):
  """RMSNorm as the original's Qwen2RMSNorm: fp32 normalise, cast, then scale."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype).astype(self.dtype) * scale.astype(self.dtype)


class LayerNorm(nn.Module):
  """SigLIP's LayerNorm: computed in fp32 (input and affine), cast back."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,),
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,),
                      self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


# ----------------------------------------------------------------------------- RoPE
ROPE_INV_FREQ_DTYPES = ("compute", "float32")


def rope_inv_freq_dtype(setting: str, compute_dtype: Dtype) -> Dtype:
  """`rope_inv_freq_dtype` config value -> the dtype `inv_freq` is rounded to.

  "compute": the compute dtype, as the original's `model.to(torch.bfloat16)` (its
  T2I script) and DeepSpeed's bf16 engine (its training) round the `inv_freq`
  buffers (the rotation angles are then computed in fp32 from the rounded values);
  "float32": never rounded. Both are the same when computing in float32.
  """
  if setting not in ROPE_INV_FREQ_DTYPES:
    raise ValueError(f"unknown rope_inv_freq_dtype '{setting}'; choose one of {list(ROPE_INV_FREQ_DTYPES)}")
  return compute_dtype if setting == "compute" else jnp.float32


def rope_inv_freq(head_dim: int, theta: float, scaling=None, dtype: Dtype = jnp.float32) -> np.ndarray:
  """Inverse frequencies (head_dim // 2,) float32 as HF computes them (llama3 scaling
  optional), rounded to `dtype` and back (the original's bf16 quirk, spec 10)."""
  return _rope_inv_freq_f32(head_dim, theta, scaling).astype(jnp.dtype(dtype)).astype(np.float32)


def _rope_inv_freq_f32(head_dim: int, theta: float, scaling=None) -> np.ndarray:
  exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
  if scaling is None:
    return inv
  factor = np.float32(scaling.factor)
  low, high = np.float32(scaling.low_freq_factor), np.float32(scaling.high_freq_factor)
  old = np.float32(scaling.original_max_position_embeddings)
  low_wavelen, high_wavelen = old / low, old / high
  wavelen = np.float32(2 * np.pi) / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype: Dtype):
  """cos/sin of shape (B, L, Dh) for integer positions (B, L), fp32 then cast."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (B, L, H, Dh) * cos + rotate_half(x) * sin (rotate-half convention)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# ------------------------------------------------------------------------ attention
@flax.struct.dataclass
class KVCache:
  """The preallocated keys and values of a layer stack: the one KV-cache pytree.

  k, v: (num_layers, B, S, Hkv, Dh) in the compute dtype (S = cache slots,
  Hkv = KV heads, Dh = head_dim); slot s holds the keys/values of the token
  written at cache index s. Built by `zeros`; the LLM's and the flow head's
  caches are two of these (`models.qwen2.init_kv_cache`, `sample.prefix.new_caches`).

  Scanned and unrolled stacks take and return this same layout
  (`call_layer_stack`): `nn.scan` slices the layer axis, so a scanned layer sees
  k, v of (B, S, Hkv, Dh) and `layer` None; an unrolled stack hands layer i the
  whole cache with `layer=i` (static, not a pytree leaf), and the layer's write
  lands in the stacked buffer at that index.
  """
  k: jax.Array
  v: jax.Array
  layer: Optional[int] = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
            dtype: Dtype) -> "KVCache":
    """A zeroed cache: k, v of (num_layers, batch, max_len, num_kv_heads, head_dim)."""
    z = jnp.zeros((num_layers, batch, max_len, num_kv_heads, head_dim), dtype)
    return cls(k=z, v=z)

  @property
  def max_len(self) -> int:
    """S, the number of cache slots (the key length attention sees)."""
    return self.k.shape[-3]

  def at_layer(self, layer: Optional[int]) -> "KVCache":
    """This cache addressed to one layer of an unrolled stack (None: the whole stack)."""
    return self.replace(layer=layer)

  def update(self, k: jax.Array, v: jax.Array, index: Optional[jax.Array]):
    """Writes k/v (B, Lq, Hkv, Dh) at slots [index, index + Lq) of this layer.

    Returns (keys, values, new cache): keys/values (B, S, Hkv, Dh) of this layer
    after the write, in the cache's dtype.
    """
    index = jnp.asarray(0 if index is None else index, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    if self.layer is None:  # a scanned layer's slice: (B, S, Hkv, Dh)
      starts, put, take = (zero, index, zero, zero), (lambda a: a), (lambda a: a)
    else:                   # the stacked buffer, written in place at `layer`
      starts = (jnp.asarray(self.layer, jnp.int32), zero, index, zero, zero)
      put, take = (lambda a: a[None]), (lambda a: a[self.layer])
    new_k = jax.lax.dynamic_update_slice(self.k, put(k.astype(self.k.dtype)), starts)
    new_v = jax.lax.dynamic_update_slice(self.v, put(v.astype(self.v.dtype)), starts)
    return take(new_k), take(new_v), self.replace(k=new_k, v=new_v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                          scale: float) -> jax.Array:
  """Grouped-query attention with a boolean allow-mask.

  q (B, Lq, Hq, D); k, v (B, Lk, Hkv, D); mask (B, Lq, Lk) True = may attend.
  Query head h uses kv head h // (Hq // Hkv) (repeat-interleave grouping).
  Scores accumulate in float32 (`preferred_element_type`), softmax runs in float32
  and the probabilities are cast to v's dtype for the value product, which again
  accumulates in float32 and is rounded once: what PyTorch's SDPA kernels do in
  bf16. Returns (B, Lq, Hq, D) in v's dtype.
  """
  b, lq, hq, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, lq, hkv, hq // hkv, d)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
  return out.astype(v.dtype).reshape(b, lq, hq, d)


# Logical names of attention activations (B, L, heads, head_dim).
ATTN_Q = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
ATTN_KV = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")


class GQAttention(nn.Module):
  """Self-attention with grouped KV heads, RoPE and an optional KV cache.

  Serves both the LLM (q/k/v biases, no qk-norm) and the flow head (no biases,
  RMSNorm over head_dim on q and k *before* RoPE). Params: q_proj, k_proj,
  v_proj, o_proj (bias-free), and q_norm/k_norm when `qk_norm_eps` is set.
  With a `KVCache` (and `cache_index`, the slot of the first query) the keys and
  values are written there and attention reads the whole cache; returns
  (out (B, L, hidden_size), the updated cache or None).
  """
  hidden_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  qk_norm_eps: Optional[float] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init
  attention_impl: str = "dense"          # models/attention.py
  attention_chunk_size: int = 512

  @nn.compact
  def __call__(self, x, rope, mask, cache=None, cache_index=None):
    b, l, _ = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    def proj(heads, axis, name):
      y = dense(heads * self.head_dim, ("embed", axis), use_bias=self.qkv_bias, name=name,
                kernel_init=self.kernel_init, **kw)(x)
      return y.reshape(b, l, heads, self.head_dim)
    q = proj(self.num_heads, "heads", "q_proj")
    k = proj(self.num_kv_heads, "kv_heads", "k_proj")
    v = proj(self.num_kv_heads, "kv_heads", "v_proj")
    if self.qk_norm_eps is not None:
      q = RMSNorm(self.qk_norm_eps, name="q_norm", axis_name="head_dim", **kw)(q)
      k = RMSNorm(self.qk_norm_eps, name="k_norm", axis_name="head_dim", **kw)(k)
    cos, sin = rope
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
      k, v, cache = cache.update(k, v, cache_index)
    # Heads over `tensor` (query heads and the output; kv heads are few, replicated).
    q = nn.with_logical_constraint(q, ATTN_Q)
    k, v = (nn.with_logical_constraint(x, ATTN_KV) for x in (k, v))
    # Names the remat policies `save_qkv_proj` and `save_attn` keep (remat_policy).
    q, k, v = (checkpoint_name(t, n) for t, n in ((q, "query_proj"), (k, "key_proj"), (v, "value_proj")))
    from showo2_jax.models import attention  # pylint: disable=import-outside-toplevel
    out = attention.attention(q, k, v, mask, self.head_dim ** -0.5, impl=self.attention_impl,
                              chunk_size=self.attention_chunk_size)
    out = nn.with_logical_constraint(out, ATTN_Q)
    out = checkpoint_name(out.reshape(b, l, self.num_heads * self.head_dim), "attn_out")
    out = dense(self.hidden_size, ("heads", "embed"), use_bias=False, name="o_proj",
                kernel_init=self.kernel_init, **kw)(out)
    return out, cache


# --------------------------------------------------------------------------- remat
def remat_policy(name: str):
  """Config string (`model.remat_policy`) -> jax.checkpoint policy (None: no remat).

  What the backward pass keeps from each layer's forward (the rest is recomputed),
  from most memory to least (MaxText's names where they exist):
  - `none`: everything (no remat).
  - `dots`: every matmul output, attention scores included
    (`checkpoint_dots`); only elementwise work is recomputed.
  - `dots_with_no_batch_dims`: the projections' outputs (q/k/v, o_proj, MLP),
    not the (B, H, L, L) attention scores; attention is recomputed.
  - `save_attn`: q, k, v (after RoPE) and the attention output; the MLP and
    the attention's scores are recomputed.
  - `save_qkv_proj`: q, k, v (after RoPE).
  - `save_attn_out`: the attention output only.
  - `full`: nothing but the layer's input (`nothing_saveable`): a whole
    forward pass recomputed per layer.
  Raises ValueError for other names.
  """
  qkv = ("query_proj", "key_proj", "value_proj")
  policies = {
      "none": None,
      "full": jax.checkpoint_policies.nothing_saveable,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
      "save_attn": jax.checkpoint_policies.save_only_these_names(*qkv, "attn_out"),
      "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*qkv),
      "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
  }
  if name not in policies:
    raise ValueError(f"unknown remat_policy '{name}'; choose one of {sorted(policies)}")
  return policies[name]


def make_layer_stack(layer_cls, num_layers: int, *, scan: bool, remat: str, num_args: int,
                     cache_argnum: Optional[int] = None, **layer_kwargs):
  """Creates `num_layers` copies of `layer_cls`; call in `setup` and assign to an
  attribute (e.g. `self.layers`).

  Scanned: one module with params stacked on a leading "layers" axis (param path
  `layers/...`); unrolled: a list (param paths `layers_0/...`, `layers_1/...`).
  Layers are called as `layer(x, *args) -> (x, cache_out)` with `num_args` args.
  """
  policy = remat_policy(remat)
  cls = layer_cls
  if remat != "none":
    cls = nn.remat(layer_cls, policy=policy, prevent_cse=not scan)
  if not scan:
    return [cls(**layer_kwargs) for _ in range(num_layers)]
  in_axes = tuple(0 if i == cache_argnum else nn.broadcast for i in range(num_args))
  return nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                 length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(**layer_kwargs)


def call_layer_stack(stack, x, *args, cache_argnum: Optional[int] = None):
  """Applies a stack from `make_layer_stack`. Returns (x, cache): the updated
  `KVCache` (same stacked layout, scanned or unrolled), None without a cache."""
  if not isinstance(stack, (list, tuple)):
    return stack(x, *args)
  cache = args[cache_argnum] if cache_argnum is not None else None
  call_args = list(args)
  for i, layer in enumerate(stack):
    if cache is not None:
      call_args[cache_argnum] = cache.at_layer(i)
    x, layer_cache = layer(x, *call_args)
    if cache is not None:
      cache = layer_cache.at_layer(None)
  return x, cache
