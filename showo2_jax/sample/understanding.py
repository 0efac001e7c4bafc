"""Image and video understanding: visual tokens, prompts, cached greedy answers.

Visual inputs are clean VAE latents, so their time slot carries t = 1, as the
original's inference scripts write it (`time_embed(1.0)`) and as training saw
understanding images (und_max_t0 = 1). Videos follow `inference_mmu_vid.py`: each
frame is encoded as a separate image, its fused tokens (h x w) are bilinearly
resized to about half the grid (27x27 -> 14x14), the frames are concatenated and
one time token leads the whole block (spec 4.5).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.data import sequences
from showo2_jax.models.showo2 import Showo2
from showo2_jax.sample import decode
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample.tokens import TokenSampling


def pooled_side(side: int) -> int:
  """Per-frame token grid side for videos: 27 -> 14 as the original, half otherwise."""
  return (side + 1) // 2


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of PyTorch's bilinear resize (align_corners=False, no antialias)."""
  scale = n_in / n_out
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = (src - i0).astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), i1), frac)
  return m


@functools.partial(jax.jit, static_argnames=("model",))
def visual_tokens(model: Showo2, params, latents, t) -> tuple[jax.Array, jax.Array]:
  """Latents (K, C, [T,] H, W) at times t (K,) -> (blocks (K, 1 + Nv, D), te (K, Dh))."""
  return model.apply({"params": params}, latents, t, method=Showo2.encode_visual)


def image_tokens(model: Showo2, params, latents) -> jax.Array:
  """Clean latents (K, C, H, W) -> visual blocks (K, 1 + N, D) with t = 1."""
  return visual_tokens(model, params, latents, jnp.ones((latents.shape[0],), jnp.float32))[0]


@functools.partial(jax.jit, static_argnames=("model", "pooled"))
def video_tokens(model: Showo2, params, frame_latents, pooled: int) -> jax.Array:
  """Per-frame clean latents (F, C, H, W) of one video -> (1, 1 + F * pooled^2, D)."""
  blocks = image_tokens(model, params, frame_latents)            # (F, 1 + h*w, D)
  f, _, d = blocks.shape
  p = model.config.patch_size
  h, w = frame_latents.shape[2] // p, frame_latents.shape[3] // p
  grid = blocks[:, 1:].reshape(f, h, w, d).astype(jnp.float32)
  rh, rw = jnp.asarray(bilinear_matrix(h, pooled)), jnp.asarray(bilinear_matrix(w, pooled))
  pooled_tokens = jnp.einsum("oh,fhwd,pw->fopd", rh, grid, rw).astype(blocks.dtype)
  return jnp.concatenate([blocks[:1, :1], pooled_tokens.reshape(1, -1, d)], axis=1)


def answer_rows(model: Showo2, params, rows: Sequence[dict], visual, *, pad_id: int,
                stop_ids: Sequence[int], max_new_tokens: int, sampling: TokenSampling,
                rng=None, bucket_multiple: int = 32, show_progress: bool = False,
                record_logits: bool = False) -> decode.Generated:
  """Cached generation for prompt rows of `sequences.understanding_prompt` (any lengths).

  visual (B, 1 + Nv, D): one visual block per row, in row order.
  """
  prompts = [list(r["text_tokens"][:r["prompt_length"]]) for r in rows]
  aligned = prefix_lib.align(
      prompts, pad_id, placement=np.stack([r["modality_positions"] for r in rows]),
      attention=np.stack([r["attention_modality_positions"] for r in rows]),
      multiple=bucket_multiple)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return decode.generate(
      model, params, aligned.tokens, aligned.shift, aligned.lengths, aligned.placement,
      aligned.attention, visual, decode.stop_array(stop_ids), pad_id, rng,
      max_new_tokens=max_new_tokens, sampling=sampling, record_logits=record_logits,
      show_progress=show_progress)
