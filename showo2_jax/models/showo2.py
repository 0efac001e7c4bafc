"""The Show-o2 model: dual-path visual tokens in a Qwen2.5 sequence, two heads.

Reads top to bottom like the paper's figure (spec section 2):
  latents --(und: 2x2 patch embed + SigLIP pos + semantic layers S)--+
          --(gen: 2x2 patch embed, projector P)----------------------+-> STF fusion
  t -> time_embed -> time_embed_proj = the time token leading each visual block
  text embeddings with visual blocks scattered in -> Qwen2.5 (omni-attention)
  -> language head (logits) and diff_proj -> flow head (velocity per position).

Param names mirror the original's state_dict (`showo`, `image_embedder_und`,
`und_trans`, `fusion_proj`, `diffusion_head_a`, ...), so the key map is readable.
The forward pass reproduces the original exactly, quirks included; see
`Showo2Config` for the switches.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import flow_head as fh
from showo2_jax.models import layers, omni_mask
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.qwen2 import Qwen2ForCausalLM
from showo2_jax.models.siglip import SiglipEncoder, resize_position_table

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype '{name}'; choose one of {sorted(DTYPES)}")
  return DTYPES[name]


class PatchEmbed(nn.Module):
  """Conv2d(C -> D, kernel p, stride p) on NHWC latents -> (K, h*w, D), row-major.

  A stride-p p x p conv is a matmul over non-overlapping patches; it is written as
  one (fp32-accumulating, bias in fp32, rounded once) contraction, as PyTorch's bf16
  conv computes it. Params `proj/kernel` (p, p, C, D) and `proj/bias` (D,) are
  those of `nn.Conv`.
  """
  features: int
  patch_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _PatchConv(self.features, self.patch_size, self.dtype, self.param_dtype, name="proj")(x)


class _PatchConv(nn.Module):
  features: int
  patch_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    n, hh, ww, ch = x.shape
    # The original's Xavier-uniform on the (out, in*k*k) view of the weight: fan_out
    # is `features` alone (flax's conv xavier would also multiply it by k*k).
    xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)
    kernel = self.param("kernel", nn.with_logical_partitioning(
        xavier, ("conv_h", "conv_w", "latent", "embed")),
        (p, p, ch, self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (self.features,), self.param_dtype)
    patches = x.astype(self.dtype).reshape(n, hh // p, p, ww // p, p, ch)
    y = jnp.einsum("nhpwqc,pqcd->nhwd", patches, kernel.astype(self.dtype),
                   preferred_element_type=jnp.float32)
    y = y + bias.astype(self.dtype).astype(jnp.float32)
    return y.astype(self.dtype).reshape(n, -1, self.features)


# PyTorch's nn.Linear default init (layers.torch_linear_kernel_init): the original
# relies on it for fusion_proj, diff_proj and time_embed_proj (spec 7.2).
TORCH_LINEAR = dict(kernel_init=layers.torch_linear_kernel_init, bias_init=layers.TORCH_LINEAR_BIAS)


class FusionProj(nn.Module):
  """STF: concat(und, gen) -> RMSNorm(1e-6) -> Linear -> GELU(erf) -> Linear."""
  hidden_size: int
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.RMSNorm(self.eps, name="norm", **kw)(x)
    kw.update(TORCH_LINEAR)
    x = layers.dense(self.hidden_size, ("fusion_in", "embed"), name="fc1", **kw)(x)
    x = layers.gelu(x, approximate=False)
    return layers.dense(self.hidden_size, ("mlp", "embed"), name="fc2", **kw)(x)


class DiffProj(nn.Module):
  """LLM width -> flow-head width: Linear -> GELU(erf) -> Linear."""
  hidden_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, **TORCH_LINEAR)
    x = layers.dense(self.hidden_size, ("embed", "mlp"), name="fc1", **kw)(x)
    return layers.dense(self.hidden_size, ("mlp", "embed_out"), name="fc2", **kw)(layers.gelu(x, approximate=False))


def semantic_modules(c: Showo2Config):
  """The understanding path's modules (spec 1.3): 2x2 patch embedder on latents,
  SigLIP's position table, the semantic layers. Assign them in a `setup` as
  `image_embedder_und`, `position_embedding`, `und_trans` (their param names in
  Show-o2's tree and in `SemanticLayers`')."""
  kw = dict(dtype=to_dtype(c.dtype), param_dtype=to_dtype(c.param_dtype))
  return (PatchEmbed(c.siglip.hidden_size, c.patch_size, **kw),
          nn.Embed(c.siglip.position_grid ** 2, c.siglip.hidden_size, **kw,
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               ("pos", "embed"))),
          SiglipEncoder(c.siglip, **kw, scan_layers=c.scan_layers, remat_policy=c.remat_policy,
                        attention_impl=c.attention_impl, attention_chunk_size=c.attention_chunk_size))


def semantic_features(module: nn.Module, x: jax.Array) -> jax.Array:
  """S(x) of `module`'s `semantic_modules`: x (B, H, W, C) channel-last latents in the
  compute dtype -> (B, H/p * W/p, D_siglip)."""
  c = module.config
  h, w = x.shape[1] // c.patch_size, x.shape[2] // c.patch_size
  und = module.image_embedder_und(x)
  pos = resize_position_table(module.position_embedding.embedding, c.siglip.position_grid, h, w)
  return module.und_trans(und + pos.astype(und.dtype)[None])


class SemanticLayers(nn.Module):
  """Show-o2's understanding path alone: latents (K, C, H, W) -> (K, N, D_siglip),
  with Show-o2's param names (semantic-layer distillation, train/distill.py)."""
  config: Showo2Config

  def setup(self):
    self.image_embedder_und, self.position_embedding, self.und_trans = semantic_modules(self.config)

  def __call__(self, latents):
    x = jnp.transpose(latents, (0, 2, 3, 1)).astype(to_dtype(self.config.dtype))
    return semantic_features(self, x)


class Showo2(nn.Module):
  config: Showo2Config
  # The original writes an empty (0, 0) slot's time token over position 0 (spec
  # 10.4). Released weights were trained with it, so it is on by default.
  empty_slots_overwrite_bos: bool = True

  def setup(self):
    c = self.config
    dtype, pdt = to_dtype(c.dtype), to_dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdt)
    stack = dict(scan_layers=c.scan_layers, remat_policy=c.remat_policy)
    rope = dict(rope_inv_freq_dtype=c.rope_inv_freq_dtype)
    attn = dict(attention_impl=c.attention_impl, attention_chunk_size=c.attention_chunk_size)
    self.showo = Qwen2ForCausalLM(c.llm, **kw, **stack, **rope, **attn)
    self.image_embedder_und, self.position_embedding, self.und_trans = semantic_modules(c)
    self.image_embedder_gen = PatchEmbed(c.hidden_size, c.patch_size, **kw)
    self.fusion_proj = FusionProj(c.hidden_size, c.fusion_norm_eps, **kw)
    self.time_embed = fh.TimestepEmbedder(c.flow_head.hidden_size, c.time_embed_dim, **kw)
    if c.has_projections:
      self.time_embed_proj = layers.dense(c.hidden_size, ("embed_out", "embed"), **kw, **TORCH_LINEAR)
      self.diff_proj = DiffProj(c.flow_head.hidden_size, **kw)
    self.diffusion_head_a = fh.FlowHead(c.flow_head, **kw, **stack, **rope, **attn)
    self.diffusion_head_b = fh.FinalLayer(c.flow_head, c.patch_dim, **kw)

  # ------------------------------------------------------------- visual tokens
  def encode_visual(self, latents: jax.Array, t: jax.Array):
    """Dual path + fusion + time embedding for K visual inputs (slot order).

    latents: (K, C, H, W) images or (K, C, T, H, W) clips, channel-first as the
    original. Returns (tokens (K, 1 + T*N, D) = time token then fused patches,
    te (K, Dh) the unprojected time embedding for adaLN).
    """
    c = self.config
    dtype = to_dtype(c.dtype)
    if latents.ndim == 4:
      latents = latents[:, :, None]
    if latents.ndim != 5 or latents.shape[1] != c.latent_channels:
      raise ValueError(f"latents must be (K, {c.latent_channels}, [T,] H, W); got {latents.shape}")
    k, ch, frames, hh, ww = latents.shape
    p = c.patch_size
    if hh % p or ww % p:
      raise ValueError(f"latent H, W ({hh}, {ww}) must be multiples of the patch size {p}")
    h, w = hh // p, ww // p
    x = jnp.transpose(latents, (0, 2, 3, 4, 1)).reshape(k * frames, hh, ww, ch).astype(dtype)
    und = semantic_features(self, x)                                  # (K*T, N, 1152)
    gen = self.image_embedder_gen(x)                                  # (K*T, N, D)
    fused = self.fusion_proj(jnp.concatenate([und, gen], axis=-1))
    fused = fused.reshape(k, frames * h * w, c.hidden_size)
    te = self.time_embed(t)
    tp = self.time_embed_proj(te) if c.has_projections else te
    return jnp.concatenate([tp[:, None].astype(fused.dtype), fused], axis=1), te

  def embed_sequence(self, text_tokens, visual_tokens, modality_positions, positions=None):
    """Text embeddings with each slot's visual block written at its (offset, length).

    visual_tokens (B*M, 1 + Nv, D) from `encode_visual`; offsets are relative to the
    window `text_tokens` covers (positions default to 0..L-1).
    """
    emb = self.showo.embed(text_tokens)
    if visual_tokens is None:
      return emb
    b, l = text_tokens.shape
    m = modality_positions.shape[1]
    if positions is None:
      positions = _default_positions(b, l)
    local = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    slot = omni_mask.scatter_slot_index(modality_positions, local, self.empty_slots_overwrite_bos)
    offset = jnp.take_along_axis(modality_positions[..., 0], jnp.maximum(slot, 0), axis=1)
    r = jnp.clip(local - offset, 0, visual_tokens.shape[1] - 1)
    gathered = gather_rows(visual_tokens.reshape((b, m) + visual_tokens.shape[1:]),
                           jnp.maximum(slot, 0), r)
    return jnp.where(slot[..., None] >= 0, gathered.astype(emb.dtype), emb)

  # ------------------------------------------------------------------ the heads
  def llm(self, inputs_embeds, positions, mask, cache=None, cache_index=None):
    """Qwen2 over embeddings -> (final-norm hidden states, new cache)."""
    return self.showo.model(inputs_embeds, positions, mask, cache, cache_index)

  def logits(self, hidden):
    return self.showo.logits(hidden)

  def flow(self, hidden, te, modality_positions, positions, mask, cache=None, cache_index=None,
           slot_index=None):
    """diff_proj + flow head on LLM hidden states -> (v_tok (B, L, p*p*C), new cache).

    te: (B*M, Dh) per slot. slot_index (B, L) defaults to the block covering each
    local position; pass it explicitly for cached windows.
    """
    c = self.config
    b, l = hidden.shape[:2]
    m = modality_positions.shape[1]
    x = self.diff_proj(hidden) if c.has_projections else hidden
    if slot_index is None:
      local = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
      slot_index = omni_mask.modulation_slot_index(modality_positions, local)
    cond = te.reshape(b, m, -1)
    x, new_cache = self.diffusion_head_a(x, cond, slot_index, positions, mask, cache, cache_index)
    return self.diffusion_head_b(x, cond, slot_index), new_cache

  def __call__(self, text_tokens, image_latents=None, t=None, modality_positions=None,
               attention_mask=None, positions=None, *, compute_logits: bool = True,
               compute_velocity: bool = True):
    """Full forward over a packed sequence (training and uncached generation).

    Returns a dict with `logits` (B, L, V) and `v_tok` (B, L, p*p*C) at every
    position (slot extraction and losses are free functions below).
    """
    b, l = text_tokens.shape
    if positions is None:
      positions = _default_positions(b, l)
    if modality_positions is None:
      modality_positions = jnp.zeros((b, 1, 2), jnp.int32)
    modality_positions = modality_positions.astype(jnp.int32)
    if attention_mask is None:
      attention_mask = omni_mask.omni_attention_mask(modality_positions, l)
    visual, te = (None, None)
    if image_latents is not None:
      visual, te = self.encode_visual(image_latents, t)
    emb = self.embed_sequence(text_tokens, visual, modality_positions, positions)
    hidden, _ = self.llm(emb, positions, attention_mask)
    out = {"hidden": hidden}
    if compute_logits:
      out["logits"] = self.logits(hidden)
    if compute_velocity and te is not None:
      out["v_tok"], _ = self.flow(hidden, te, modality_positions, positions, attention_mask)
    return out


def gather_rows(per_slot: jax.Array, slot: jax.Array, index: jax.Array) -> jax.Array:
  """out[b, l] = per_slot[b, slot[b, l], index[b, l]]: (B, M, N, F) -> (B, L, F).

  A gather batched over rows (vmap), never a flat index into all B*M slots: each
  device reads only its own rows, and the backward scatter-adds into a
  (B_local, M, N, F) buffer instead of a zero buffer sized by the global batch
  (which XLA would then all-reduce across the data-parallel devices).
  """
  return jax.vmap(lambda x, s, i: x[s, i])(per_slot, slot, index)


def _default_positions(b, l):
  return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))


# ----------------------------------------------------------- outputs and losses
def unpatchify(tokens: jax.Array, channels: int, height: int, width: int, frames: int = 1,
               video: bool = False) -> jax.Array:
  """(n, T*N, p*p*C) -> (n, C, H, W) or (n, C, T, H, W) with the original's
  raster-quad layout (spec 2.3): token r predicts raster pixels 4r..4r+3."""
  n = tokens.shape[0]
  x = tokens.reshape(n, frames, height * width, channels)
  x = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, channels, frames, height, width)
  return x if video else x[:, :, 0]


def patchify_labels(labels: jax.Array, patch_dim: int) -> jax.Array:
  """(K, C, [T,] H, W) -> (K, T*N, p*p*C): the plain reshape the original uses."""
  if labels.ndim == 4:
    labels = labels[:, :, None]
  k, c = labels.shape[:2]
  x = jnp.transpose(labels.reshape(k, c, -1), (0, 2, 1))
  return x.reshape(k, -1, patch_dim)


def extract_slot_tokens(v_tok: jax.Array, modality_positions: jax.Array, num_tokens: int) -> jax.Array:
  """(B, L, F) -> (B, M, num_tokens, F): each slot's tokens after its time token."""
  o = modality_positions[..., 0].astype(jnp.int32)
  idx = o[:, :, None] + 1 + jnp.arange(num_tokens, dtype=jnp.int32)[None, None]
  idx = jnp.clip(idx, 0, v_tok.shape[1] - 1)
  b, m = o.shape
  return jnp.take_along_axis(v_tok, idx.reshape(b, m * num_tokens)[..., None], axis=1).reshape(
      b, m, num_tokens, v_tok.shape[-1])


def velocity_per_slot(v_tok, modality_positions, latent_shape, channels):
  """(B, L, F) -> (B*M, C, [T,] H, W) velocities in slot order; use
  `modality_positions[..., 1] > 0` to select real slots."""
  video = len(latent_shape) == 3
  frames, h, w = latent_shape if video else (1,) + tuple(latent_shape)
  n = frames * h * w * channels // v_tok.shape[-1]
  tok = extract_slot_tokens(v_tok, modality_positions, n)
  b, m = tok.shape[:2]
  return unpatchify(tok.reshape(b * m, n, -1), channels, h, w, frames, video)


def ntp_loss(logits, text_labels, ignore_index: int = -100):
  """CE(logits[:, :-1], labels[:, 1:]), mean over non-ignored targets (fp32).

  Written as logsumexp - target logit so XLA fuses the fp32 upcast into the
  reduction instead of materialising a (B, L, V) fp32 log-softmax.
  """
  logits = logits[:, :-1]
  labels = text_labels[:, 1:]
  valid = labels != ignore_index
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  target = jnp.take_along_axis(logits, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  nll = lse - target.astype(jnp.float32)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def ntp_loss_from_hidden(logits_fn, hidden, text_labels, ignore_index: int = -100,
                         chunk_size: int = 256):
  """`ntp_loss(logits_fn(hidden), text_labels)` without the (B, L, V) logits.

  hidden (B, L, D) final-norm LLM states; logits_fn maps (B, n, D) -> (B, n, V)
  (the model's own head, e.g. `Showo2.logits`, so the numbers are the same);
  text_labels (B, L) int, `ignore_index` = no target. Returns the fp32 mean NLL.

  The original applies the lm_head at every position and then ignores most of
  them (image blocks, pads, prompts). Here, within each row, the shifted positions
  that have a target are moved to the front (a stable sort; rows stay where they
  are, so a batch-sharded `hidden` needs no communication), then a `lax.scan` runs
  the head and logsumexp on `chunk_size` positions of every row at a time and
  skips (`lax.cond`) each chunk in which no row has a target. The gradient is
  computed in the same pass (a `custom_vjp`, as fused cross-entropy kernels do):
  per chunk, d nll / d logits = softmax - one-hot at the targets, pulled back
  through the head (`jax.vjp` of `logits_fn`) to the chunk's hidden states and,
  summed over the chunks in the scan's carry, to the head's parameters; the
  backward only scales the two by the incoming cotangent. So each labelled chunk
  runs the head's matmul three times (logits, d hidden, d weights; a remat'd
  autodiff runs four), at most one (B, chunk_size, V) block of logits lives at a
  time, and a skipped chunk costs nothing in either pass (a call that is not
  differentiated, e.g. an evaluation, still runs the two pull-backs). The sum runs in a
  different order than `ntp_loss` (fp32 rounding only; in bf16 the gradient is
  rounded once, where autodiff rounds softmax and one-hot separately).
  """
  b, _, d = hidden.shape
  h = hidden[:, :-1]
  labels = text_labels[:, 1:]
  valid = labels != ignore_index
  n = h.shape[1]
  order = jnp.argsort(~valid, axis=1, stable=True)    # per row: labelled positions first
  chunks = -(-n // chunk_size)
  pad = chunks * chunk_size - n

  def arrange(x):
    x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((b, chunks, chunk_size) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)                         # (chunks, B, chunk_size, ...)

  h_c, lab_c, val_c = arrange(h), arrange(jnp.where(valid, labels, 0)), arrange(valid)
  # The head's closed-over parameters (the embedding table or lm_head) as explicit
  # arguments, so that the custom_vjp can return their gradient.
  head, consts = jax.closure_convert(logits_fn, h_c[0])
  total = _fused_ntp_sum(head, h_c, lab_c, val_c, *consts)
  return total / jnp.maximum(jnp.sum(valid), 1)


def _ntp_chunk(head, hc, lc, vc, consts):
  """One chunk: (summed NLL, d NLL / d hc, d NLL / d consts)."""
  logits, pull = jax.vjp(lambda x, *c: head(x, *c), hc, *consts)
  lf = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(lf, axis=-1)
  target = jnp.take_along_axis(logits, lc[..., None], axis=-1)[..., 0].astype(jnp.float32)
  nll = jnp.sum(jnp.where(vc, lse - target, 0.0))
  onehot = jnp.arange(lf.shape[-1], dtype=lc.dtype) == lc[..., None]
  dlogits = jnp.where(vc[..., None], jnp.exp(lf - lse[..., None]) - onehot, 0.0).astype(logits.dtype)
  dh, *dc = pull(dlogits)
  return nll, dh, dc


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_ntp_sum(head, h_c, lab_c, val_c, *consts):
  return _fused_ntp_fwd(head, h_c, lab_c, val_c, *consts)[0]


def _fused_ntp_fwd(head, h_c, lab_c, val_c, *consts):
  zeros_c = [jnp.zeros_like(c) for c in consts]

  def body(carry, xs):
    total, dcs = carry
    hc, lc, vc = xs

    def compute():
      nll, dh, dc = _ntp_chunk(head, hc, lc, vc, consts)
      return total + nll, [a + x.astype(a.dtype) for a, x in zip(dcs, dc)], dh

    def skip():
      return total, dcs, jnp.zeros_like(hc)
    total, dcs, dh = jax.lax.cond(jnp.any(vc), compute, skip)
    return (total, dcs), dh

  (total, dcs), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros_c), (h_c, lab_c, val_c))
  return total, (dh, dcs, lab_c, val_c)


def _fused_ntp_bwd(head, res, g):
  del head
  dh, dcs, lab_c, val_c = res
  zero_int = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # noqa: E731
  return ((g * dh).astype(dh.dtype), zero_int(lab_c), zero_int(val_c),
          *[(g * dc).astype(dc.dtype) for dc in dcs])


_fused_ntp_sum.defvjp(_fused_ntp_fwd, _fused_ntp_bwd)


def flow_targets_and_mask(image_labels, image_masks, modality_positions, patch_dim: int):
  """Places each slot's target tokens at [o+1, o+n) and builds the flow mask.

  Returns (labels (B, L, F), mask (B, L)). The time position o of every slot is
  removed from the mask, including o = 0 for empty slots (as the original).
  """
  b, l = image_masks.shape
  m = modality_positions.shape[1]
  tokens = patchify_labels(image_labels, patch_dim)                   # (B*M, Nv, F)
  local = _default_positions(b, l)
  slot = omni_mask.modulation_slot_index(modality_positions, local)
  o = jnp.take_along_axis(modality_positions[..., 0], jnp.maximum(slot, 0), axis=1)
  r = local - o - 1
  picked = gather_rows(tokens.reshape((b, m) + tokens.shape[1:]), jnp.maximum(slot, 0),
                       jnp.clip(r, 0, tokens.shape[1] - 1))
  labels = jnp.where(((slot >= 0) & (r >= 0))[..., None], picked, 0.0)
  is_time = jnp.any(local[:, None, :] == modality_positions[..., 0][:, :, None], axis=1)
  mask = (image_masks > 0) & ~is_time
  return labels, mask


def flow_loss(v_tok, image_labels, image_masks, modality_positions):
  """Element-wise MSE over every masked (position, channel) entry in the batch."""
  labels, mask = flow_targets_and_mask(image_labels, image_masks, modality_positions, v_tok.shape[-1])
  err = jnp.square(v_tok.astype(jnp.float32) - labels.astype(jnp.float32))
  count = jnp.sum(mask) * v_tok.shape[-1]
  return jnp.sum(jnp.where(mask[..., None], err, 0.0)) / jnp.maximum(count, 1)


def init_params(model: Showo2, rng, batch=1, seq_len=None, latent_hw=None, frames=None):
  """Initialises (boxed, logically-partitioned) params with tiny dummy inputs."""
  c = model.config
  hw = latent_hw or (c.patch_size * 2, c.patch_size * 2)
  n = (hw[0] // c.patch_size) * (hw[1] // c.patch_size) * (frames or 1)
  seq_len = seq_len or n + 4
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  shape = (batch, c.latent_channels) + ((frames,) if frames else ()) + tuple(hw)
  latents = jnp.zeros(shape, jnp.float32)
  mp = jnp.asarray(np.tile(np.array([[[1, n + 1]]], np.int32), (batch, 1, 1)))
  return model.init(rng, tokens, latents, jnp.zeros((batch,), jnp.float32), mp)
