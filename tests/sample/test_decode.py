"""Cached text decoding: token choice rules, and equality with the uncached loop."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.models import omni_mask
from showo2_jax.sample import decode, prefix, understanding
from showo2_jax.sample.tokens import GREEDY, TokenSampling, filter_logits, sample_next

PAD, BOI, EOI, IMG_PAD = 0, 3, 4, 5
NV = 17  # 4x4 tokens + the time slot (tiny config, 8x8 latents)


# --- token choice -----------------------------------------------------------------------------

def test_greedy_is_argmax():
  logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 3.5]])
  np.testing.assert_array_equal(sample_next(jax.random.PRNGKey(0), logits, GREEDY), [1, 2])
  # top_k = 1 is greedy too, whatever the temperature (the original's MMU setting).
  np.testing.assert_array_equal(
      sample_next(jax.random.PRNGKey(0), logits, TokenSampling(temperature=1.0, top_k=1)), [1, 2])


def test_top_k_and_top_p_keep_the_right_sets():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()
  assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
  # The nucleus keeps the token that crosses top_p: 0.5 + 0.2 >= 0.6.
  assert kept(filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]
  assert kept(filter_logits(logits, top_p=0.4)) == [True, False, False, False, False]
  assert kept(filter_logits(logits, top_p=1.0)) == [True] * 5


def test_sampling_follows_the_filtered_distribution():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  rngs = jax.random.split(jax.random.PRNGKey(0), 2000)
  draws = jax.vmap(lambda r: sample_next(r, logits, TokenSampling(temperature=1.0, top_k=2)))(rngs)
  freq = np.bincount(np.asarray(draws).ravel(), minlength=3) / draws.size
  np.testing.assert_allclose(freq, [0.625, 0.375, 0.0], atol=0.04)


def test_invalid_settings_fail_early():
  with pytest.raises(ValueError):
    TokenSampling(top_p=0.0)
  with pytest.raises(ValueError):
    TokenSampling(temperature=-1.0)


# --- cached vs uncached -----------------------------------------------------------------------

def _batch(model, params, seed=0):
  """Two understanding prompts of different lengths, one clean image each."""
  rng = np.random.default_rng(seed)
  rows = []
  for head in (4, 11):
    text = list(rng.integers(10, 290, head))
    tokens = [1] + text + [BOI] + [IMG_PAD] * NV + [EOI] + list(rng.integers(10, 290, 5))
    rows.append({"text_tokens": np.asarray(tokens, np.int32), "prompt_length": len(tokens),
                 "modality_positions": np.array([[head + 2, NV]], np.int32),
                 "attention_modality_positions": np.array([[head + 2, NV]], np.int32)})
  latents = jax.random.normal(jax.random.PRNGKey(seed), (2, 16, 8, 8))
  return rows, understanding.image_tokens(model, params, latents)


def _aligned(rows):
  return prefix.align([list(r["text_tokens"]) for r in rows], PAD,
                      placement=np.stack([r["modality_positions"] for r in rows]), multiple=16)


@pytest.mark.parametrize("sampling", [GREEDY, TokenSampling(temperature=1.0, top_k=5, top_p=0.9)],
                         ids=["greedy", "topk_topp"])
@pytest.mark.slow
def test_cached_decoding_equals_uncached(tiny, sampling):
  model, params = tiny
  rows, vis = _batch(model, params)
  a = _aligned(rows)
  key = jax.random.PRNGKey(3)
  args = (model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis)
  cached = decode.generate(*args, decode.stop_array([]), PAD, key, max_new_tokens=10,
                           sampling=sampling)
  uncached = decode.generate_uncached(*args, PAD, key, max_new_tokens=10, sampling=sampling)
  np.testing.assert_array_equal(cached.tokens, uncached)
  assert int(cached.num_steps) == 10


@pytest.mark.slow
def test_cached_logits_equal_each_row_computed_alone(tiny):
  """Left-padding in a batch changes nothing: compare with unpadded full forwards."""
  model, params = tiny
  rows, vis = _batch(model, params, seed=1)
  a = _aligned(rows)
  gen = decode.generate(model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis,
                        decode.stop_array([]), PAD, jax.random.PRNGKey(0), max_new_tokens=6,
                        sampling=GREEDY, record_logits=True)
  for i, r in enumerate(rows):
    seq = np.concatenate([r["text_tokens"], np.asarray(gen.tokens[i])])[None]
    out = _full_logits(model, params, seq, r["modality_positions"][None], vis[i:i + 1])
    n = r["prompt_length"]
    want = np.concatenate([out[0, :n], out[0, n:]])
    got = np.concatenate([gen.prompt_logits[i, a.shift[i]:], gen.step_logits[i, :-1]])
    err = np.linalg.norm(got - want[:got.shape[0]]) / np.linalg.norm(want)
    assert err < 1e-5, err


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, tokens, mp, visual):
  """Logits of one unpadded row, no cache: the reference."""
  def fn(m):
    l = tokens.shape[1]
    emb = m.embed_sequence(tokens, visual, mp)
    hidden, _ = m.llm(emb, jnp.arange(l)[None], omni_mask.omni_attention_mask(mp, l))
    return m.logits(hidden)
  return model.apply({"params": params}, method=fn)


def test_rows_stop_at_their_stop_token(tiny):
  model, params = tiny
  rows, vis = _batch(model, params)
  a = _aligned(rows)
  args = (model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis)
  free = decode.generate(*args, decode.stop_array([]), PAD, jax.random.PRNGKey(0),
                         max_new_tokens=10, sampling=GREEDY)
  free = np.asarray(free.tokens)
  first = int(np.argmax(free[0] != free[0, 0])) if (free[0] != free[0, 0]).any() else 0
  stop = int(free[0, first])  # row 0 stops at the first occurrence of this token
  out = decode.generate(*args, decode.stop_array([stop]), PAD, jax.random.PRNGKey(0),
                        max_new_tokens=10, sampling=GREEDY)
  toks = np.asarray(out.tokens)
  np.testing.assert_array_equal(toks[0, :first + 1], free[0, :first + 1])
  assert (toks[0, first + 1:] == PAD).all()
  assert decode.trim(toks, [stop], keep_stop=True)[0] == free[0, :first + 1].tolist()
  if stop not in free[1]:  # row 1 never stops: it runs to max_new_tokens
    np.testing.assert_array_equal(toks[1], free[1])
    assert int(out.num_steps) == 10


# --- several images per prompt, per-row settings, streaming ------------------------------------

def _multi_image_batch(model, params):
  """Row 0 asks about two images (two visual blocks), row 1 about one (an empty slot)."""
  rng = np.random.default_rng(5)
  block = [BOI] + [IMG_PAD] * NV + [EOI]
  text = lambda n: list(rng.integers(10, 290, n))
  head0, mid0 = text(4), text(2)
  row0 = [1] + head0 + block + mid0 + block + text(5)
  pos0 = [[len(head0) + 2, NV], [len(head0) + 2 + NV + 1 + len(mid0) + 1, NV]]
  head1 = text(9)
  row1 = [1] + head1 + block + text(3)
  pos1 = [[len(head1) + 2, NV], [0, 0]]
  latents = jax.random.normal(jax.random.PRNGKey(7), (3, 16, 8, 8))
  blocks = understanding.image_tokens(model, params, latents)
  vis = jnp.stack([blocks[0], blocks[1], blocks[2], jnp.zeros_like(blocks[0])])   # (B*M, ...)
  a = prefix.align([row0, row1], PAD, placement=np.asarray([pos0, pos1], np.int32), multiple=16)
  return a, vis


@pytest.mark.slow
def test_several_images_cached_equals_uncached(tiny):
  model, params = tiny
  a, vis = _multi_image_batch(model, params)
  args = (model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis)
  key = jax.random.PRNGKey(1)
  cached = decode.generate(*args, decode.stop_array([]), PAD, key, max_new_tokens=8,
                           sampling=GREEDY)
  uncached = decode.generate_uncached(*args, PAD, key, max_new_tokens=8, sampling=GREEDY)
  np.testing.assert_array_equal(cached.tokens, uncached)
  # The second image matters: dropping it changes the first row's answer logits.
  gen2 = decode.generate(*args, decode.stop_array([]), PAD, key, max_new_tokens=2,
                         sampling=GREEDY, record_logits=True)
  one = a.placement.copy()
  one[0, 1] = 0
  gen1 = decode.generate(model, params, a.tokens, a.shift, a.lengths, one, one, vis,
                         decode.stop_array([]), PAD, key, max_new_tokens=2, sampling=GREEDY,
                         record_logits=True)
  assert not np.allclose(gen1.prompt_logits[0, -1], gen2.prompt_logits[0, -1], atol=1e-4)


@pytest.mark.slow
def test_per_row_settings_and_streaming(tiny):
  """row_sampling / row_max_new give each row its own settings in one compiled call, and
  the stream sink sees every step's tokens."""
  model, params = tiny
  a, vis = _multi_image_batch(model, params)
  args = (model, params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis)
  key = jax.random.PRNGKey(2)
  greedy = np.asarray(decode.generate(*args, decode.stop_array([]), PAD, key, max_new_tokens=8,
                                      sampling=GREEDY).tokens)
  seen = {}
  sid = decode.open_stream(lambda step, toks: seen.__setitem__(step, toks.tolist()))
  try:
    out = decode.generate(
        *args, decode.stop_array([]), PAD, key, max_new_tokens=8, sampling=GREEDY,
        row_sampling=(jnp.asarray([0.0, 1.0]), jnp.asarray([1.0, 0.5])),
        row_max_new=jnp.asarray([3, 8], jnp.int32), stream_id=jnp.int32(sid))
    toks = np.asarray(out.tokens)
    jax.effects_barrier()
  finally:
    decode.close_stream(sid)
  np.testing.assert_array_equal(toks[0, :3], greedy[0, :3])   # temperature 0: greedy
  assert (toks[0, 3:] == PAD).all()                          # its own max of 3 tokens
  assert int(out.num_steps) == 8
  assert [seen[i] for i in range(8)] == toks.T.tolist()
