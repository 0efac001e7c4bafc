"""Cached flow-matching generation equals the original's full recompute.

The velocity test is the contract of the cache (issue: relative error < 1e-5 in
float32): prefix keys/values reused in the LLM and the flow head, the block alone
per step, eoi/eos/pads dropped, no lm_head.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.config_lib import load_config
from showo2_jax.convert.showo2_torch import abstract_params
from showo2_jax.data import sequences
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import Showo2
from showo2_jax.flow import transport
from showo2_jax.sample import prefix, visual

PAD, BOS, EOS, BOI, EOI, IMG_PAD = 0, 1, 2, 3, 4, 5


def _t2i_rows(prompt_lens, nv, total, rng):
  """Full original rows [bos] prompt [boi] block [eoi] [eos] pads and their prefixes."""
  full, prefixes, mp = [], [], []
  for n in prompt_lens:
    prompt = list(rng.integers(10, 290, n))
    row = [BOS] + prompt + [BOI] + [IMG_PAD] * nv + [EOI, EOS]
    full.append(row + [PAD] * (total - len(row)))
    prefixes.append([BOS] + prompt + [BOI])
    mp.append([[n + 2, nv]])
  return np.asarray(full, np.int32), prefixes, np.asarray(mp, np.int32)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@functools.partial(jax.jit, static_argnums=0)
def _cached_velocity(model, params, a: dict, x, t, ctx_vis=None, ctx_te=None):
  """Prefill the aligned prefixes once, then one block evaluation."""
  width = a["tokens"].shape[1]
  nq = 1 + int(np.prod(x.shape[2:])) // 4
  llm, flow, _ = prefix.prefill(model, params, a["tokens"], a["shift"], a["placement"],
                                a["attention"], width + nq, visual=ctx_vis, te=ctx_te,
                                with_flow=True, logits=None)
  return visual.block_velocity(model, params, x, t, llm, flow, a["shift"], a["lengths"], width)


@functools.partial(jax.jit, static_argnums=0)
def _uncached(model, params, full, mp, context, x, t):
  return visual.uncached_velocity(model, params, full, mp, context, x, t, compute_logits=False)


def _aligned(prefixes, **kw):
  return dataclasses.asdict(prefix.align(prefixes, PAD, multiple=8, **kw))


# The image case stays in the fast tier (the cached path against full recompute, ~18 CPU s);
# the video case and the two tests below (~19 CPU s each) run in the whole suite.
@pytest.mark.parametrize("latent_shape", [(8, 8), pytest.param((2, 12, 8), marks=pytest.mark.slow)],
                         ids=["image", "video_12x8"])
def test_cached_velocity_equals_full_recompute(tiny, latent_shape):
  """Prompts of different lengths plus two null rows, as one CFG batch."""
  model, params = tiny
  rng = np.random.default_rng(0)
  tokens_per_frame = latent_shape[-1] * latent_shape[-2] // 4
  frames = latent_shape[0] if len(latent_shape) == 3 else 1
  nv = 1 + frames * tokens_per_frame
  full, prefixes, mp = _t2i_rows([3, 9, 0, 0], nv, nv + 20, rng)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16) + latent_shape)
  t = jnp.array([0.0, 0.3, 0.3, 0.9])
  cached = _cached_velocity(model, params, _aligned(prefixes), x, t)
  full_v = _uncached(model, params, full, mp, jnp.zeros((4, 0) + x.shape[1:]), x, t)
  assert cached.shape == x.shape
  assert _rel(cached, full_v) < 1e-5


@pytest.mark.slow
def test_cached_sampler_equals_original_loop(tiny):
  """Euler + CFG end to end, and the I2V condition frame stays exactly fixed."""
  model, params = tiny
  rng = np.random.default_rng(1)
  nv = 1 + 2 * 16
  full, prefixes, mp = _t2i_rows([5, 2, 0, 0], nv, nv + 12, rng)
  a = prefix.align(prefixes, PAD, multiple=8)
  noise = transport.initial_noise(jax.random.PRNGKey(0), (2, 16, 2, 8, 8))
  grid = transport.time_grid(4)
  cached = visual.sample_latents(model, params, a.tokens, a.shift, a.lengths, a.placement,
                                 a.attention, None, None, noise, grid, 4.0,
                                 first_frame_as_cond=True)
  ref = visual.sample_latents_uncached(model, params, full, mp, jnp.zeros((4, 0, 16, 2, 8, 8)),
                                       noise, grid, 4.0, first_frame_as_cond=True)
  assert _rel(cached, ref) < 1e-5
  np.testing.assert_array_equal(cached[:, :, 0], noise[:, :, 0])
  assert _rel(cached[:, :, 1], noise[:, :, 1]) > 0.1


@pytest.mark.slow
def test_in_context_image_sees_clean_history(tiny):
  """Mixed modality: a clean earlier image (t = 1) inside the cached prefix, and the
  null row built as the original (overlapping slots at 2) equal a full recompute."""
  model, params = tiny
  rng = np.random.default_rng(2)
  nv, total = 17, 64
  story = list(rng.integers(10, 290, 4))
  hist_block = [BOI] + [IMG_PAD] * nv + [EOI]
  more = list(rng.integers(10, 290, 3))
  cond = [BOS] + story + hist_block + more + [BOI] + [IMG_PAD] * nv + [EOI]
  o1, o2 = len(story) + 2, len(story) + len(hist_block) + len(more) + 2
  null = [BOS, BOI] + [IMG_PAD] * nv + [EOI]
  full = np.asarray([cond + [PAD] * (total - len(cond)), null + [PAD] * (total - len(null))], np.int32)
  mp = np.asarray([[[o1, nv], [o2, nv]], [[2, nv], [2, nv]]], np.int32)
  history = jax.random.normal(jax.random.PRNGKey(5), (1, 16, 8, 8))
  x = jax.random.normal(jax.random.PRNGKey(6), (1, 16, 8, 8))
  t = jnp.array([0.4])
  # Original: the null row's earlier slot holds (irrelevant) noise, overwritten by the last slot.
  context = jnp.stack([history, x])                                  # (2 rows, 1 slot, ...)
  ref = _uncached(model, params, full, mp, context, jnp.concatenate([x, x]), jnp.concatenate([t, t]))
  a = _aligned([cond[:o2], [BOS, BOI]], placement=np.asarray([[[o1, nv]], [[0, 0]]], np.int32))
  ctx_vis, ctx_te = model.apply({"params": params}, jnp.concatenate([history, history]),
                                jnp.ones((2,)), method=type(model).encode_visual)
  got = _cached_velocity(model, params, a, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                         ctx_vis, ctx_te)
  assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("name,side,block,text_budget", [
    ("showo2_1p5b", 54, 730, 290), ("showo2_1p5b_hq512", 64, 1025, 251),
    ("showo2_1p5b_hq1024", 128, 4097, 251)])
def test_released_resolutions_trace_with_the_right_geometry(name, side, block, text_budget):
  """The real 1.5B architecture at 432 / 512 / 1024 px, shapes only (scanned layers,
  which also exercises the stacked-cache path)."""
  cfg = load_config(name)
  config = Showo2Config.from_config_dict(cfg.model).replace(scan_layers=True)
  model = Showo2(config, empty_slots_overwrite_bos=False)
  assert 1 + (side // config.patch_size) ** 2 == block
  assert sequences.t2i_max_text_len(cfg.max_seq_len, block) == text_budget
  a = prefix.align([[BOS] + [7] * text_budget + [BOI], [BOS, BOI]], PAD, multiple=32)
  out = jax.eval_shape(
      lambda p, noise: visual.sample_latents(
          model, p, a.tokens, a.shift, a.lengths, a.placement, a.attention, None, None, noise,
          transport.time_grid(50), 7.5),
      nn.meta.unbox(abstract_params(config)), jax.ShapeDtypeStruct((1, 16, side, side), jnp.float32))
  assert out.shape == (1, 16, side, side)
