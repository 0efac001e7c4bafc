"""KV-cached flow-matching generation of images and videos (T2I, T2V, I2V, in context).

The original recomputes the whole padded sequence (text, visual block, eoi, eos and
up to ~290 pads) through the LLM, the lm_head and the flow head at every ODE step
(spec 10.18). But, by causality in both the LLM and the flow head:
  * the prefix before the time token (bos, prompt, boi, and any earlier clean
    context images) never depends on the image being generated, so its keys and
    values are computed once, in the LLM *and* in the flow head (image tokens
    attend to the flow-head states of the prefix);
  * the positions after the visual block (eoi, eos, pads) influence nothing, so
    they are dropped;
  * logits are never needed, so the lm_head is skipped.
Per step only the N+1 block tokens run, against the cached prefix. The step loop
is a `lax.scan` (`transport.sample_ode`) inside one `jax.jit`; CFG runs cond and
null rows in one batch.

`sample_latents_uncached` is the original's loop (full recompute per step), kept
as the reference for tests and the baseline for benchmarks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from showo2_jax.models.showo2 import Showo2, to_dtype, unpatchify, velocity_per_slot
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample import progress
from showo2_jax.flow import transport


def _geometry(model: Showo2, x: jax.Array):
  """(frames, H, W, video, tokens in the block incl. the time token) of latents x."""
  video = x.ndim == 5
  frames, h, w = x.shape[2:] if video else (1,) + x.shape[2:]
  p = model.config.patch_size
  return frames, h, w, video, 1 + frames * (h // p) * (w // p)


def zero_first_frame(v: jax.Array) -> jax.Array:
  """The original's `first_frame_as_cond`: latent frame 0 is a condition, not denoised."""
  return v.at[:, :, 0].set(0)


def block_velocity(model: Showo2, params, x, t, llm_cache, flow_cache, shift, offsets, start: int,
                   repeats: int = 1):
  """Velocity of the visual block of every row against cached prefixes.

  x (R, C, [T,] H, W) latents at time t (R,); offsets (R,) true position of each
  row's time token; start = the cache slot where the block begins (the aligned
  prefix width). `repeats` = k > 1 says x and t are k identical copies of their
  first R/k rows (CFG's [x; x]): the visual tokens (patch embeds, semantic
  layers, fusion, time embedding), which depend on (x, t) only, are computed
  once and tiled. Returns the velocity (R, C, [T,] H, W) in the compute dtype.
  """
  variables = {"params": params}
  frames, h, w, video, nq = _geometry(model, x)
  rows = x.shape[0]
  if rows % repeats:
    raise ValueError(f"repeats={repeats} does not divide the {rows} rows")
  n = rows // repeats
  visual, te = model.apply(variables, x[:n], t[:n], method=Showo2.encode_visual)
  if repeats > 1:
    visual = jnp.tile(visual, (repeats,) + (1,) * (visual.ndim - 1))
    te = jnp.tile(te, (repeats,) + (1,) * (te.ndim - 1))
  kv_len = start + nq
  positions = offsets[:, None] + jnp.arange(nq, dtype=jnp.int32)[None]
  mask = prefix_lib.window_mask(shift, start, nq, kv_len, bidirectional=True)
  hidden, _ = model.apply(variables, visual, positions, mask, llm_cache, start, method=Showo2.llm)
  one_slot = jnp.zeros((rows, 1, 2), jnp.int32)       # only its shape (M = 1) is read
  slot_index = jnp.zeros((rows, nq), jnp.int32)       # every block position is slot 0
  v_tok, _ = model.apply(variables, hidden, te, one_slot, positions, mask, flow_cache, start,
                         slot_index, method=Showo2.flow)
  return unpatchify(v_tok[:, 1:], model.config.latent_channels, h, w, frames, video)


@functools.partial(jax.jit, static_argnames=(
    "model", "method", "use_cfg", "first_frame_as_cond", "show_progress"))
def sample_latents(model: Showo2, params, tokens, shift, lengths, placement, attention, context_visual,
                   context_te, noise, grid, guidance_scale, *, method: str = "euler",
                   use_cfg: bool = True, first_frame_as_cond: bool = False,
                   show_progress: bool = False) -> jax.Array:
  """Generates one visual block per row after its (aligned) prefix.

  tokens (R, P) are the prefixes up to and including boi, left-aligned
  (`prefix.align`); with CFG, R = 2B rows [cond; null]. lengths (R,) are the
  prefix lengths, i.e. the true position of each row's time token. context_visual /
  context_te: visual tokens and time embeddings of clean images inside the
  prefixes (None for plain T2I). noise (B, C, [T,] H, W) float32 (for I2V with
  frame 0 already set to the condition latent); grid from `transport.time_grid`.
  Returns the final latents (B, ...) float32.
  """
  _, _, _, _, nq = _geometry(model, noise)
  start = tokens.shape[1]
  llm_cache, flow_cache, _ = prefix_lib.prefill(
      model, params, tokens, shift, placement, attention, start + nq, visual=context_visual,
      te=context_te, with_flow=True, logits=None)

  # With CFG the guided velocity feeds [x; x], [t; t]: encode the image once.
  doubled = use_cfg and not transport.is_static_zero(guidance_scale)

  def model_fn(x, t):
    v = block_velocity(model, params, x, t, llm_cache, flow_cache, shift, lengths, start,
                       repeats=2 if doubled else 1)
    progress.report(show_progress, t[0])
    return zero_first_frame(v) if first_frame_as_cond else v

  v_fn = model_fn
  if use_cfg:
    v_fn = transport.cfg_velocity_fn(model_fn, guidance_scale, dtype=to_dtype(model.config.dtype))
  return transport.sample_ode(v_fn, noise, grid, method=method)


def uncached_velocity(model: Showo2, params, tokens, modality_positions, context, x, t,
                      compute_logits: bool = True) -> jax.Array:
  """The original's `t2i_generate` forward: full sequence, every slot, every step.

  tokens (R, L) full padded rows; modality_positions (R, M, 2), the last slot is
  the image being generated; context (R, M-1, C, ...) clean latents of the earlier
  slots (fed with t = 1, as the original forces); x (R, ...) at t (R,).
  Returns the last slot's velocity (R, ...).
  """
  r, m = modality_positions.shape[:2]
  frames, h, w, video, _ = _geometry(model, x)
  latents = jnp.concatenate([context.astype(x.dtype), x[:, None]], axis=1)
  latents = latents.reshape((r * m,) + x.shape[1:])
  ts = jnp.concatenate([jnp.ones((r, m - 1), t.dtype), t[:, None]], axis=1).reshape(-1)
  out = model.apply({"params": params}, tokens, latents, ts, modality_positions,
                    compute_logits=compute_logits)
  shape = (frames, h, w) if video else (h, w)
  v = velocity_per_slot(out["v_tok"], modality_positions, shape, model.config.latent_channels)
  v = v.reshape((r, m) + x.shape[1:])[:, -1]
  if compute_logits:  # keep the (unused) lm_head in the graph, as the original computes it
    v = v + 0 * jnp.sum(out["logits"]).astype(v.dtype)
  return v


@functools.partial(jax.jit, static_argnames=(
    "model", "method", "use_cfg", "first_frame_as_cond", "compute_logits"))
def sample_latents_uncached(model: Showo2, params, tokens, modality_positions, context, noise, grid,
                            guidance_scale, *, method: str = "euler", use_cfg: bool = True,
                            first_frame_as_cond: bool = False, compute_logits: bool = True):
  """The original's sampling loop: `uncached_velocity` at every ODE evaluation."""
  def model_fn(x, t):
    v = uncached_velocity(model, params, tokens, modality_positions, context, x, t, compute_logits)
    return zero_first_frame(v) if first_frame_as_cond else v

  v_fn = model_fn
  if use_cfg:
    v_fn = transport.cfg_velocity_fn(model_fn, guidance_scale, dtype=to_dtype(model.config.dtype))
  return transport.sample_ode(v_fn, noise, grid, method=method)
