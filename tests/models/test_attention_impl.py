"""`model.attention_impl`: every implementation matches `dense` (the reference) to
float32 round-off, forward and backward, in training and in the cached samplers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.convert.showo2_torch import load_original
from showo2_jax.models import attention, attention_splash, omni_mask
from showo2_jax.models import showo2 as s2
from showo2_jax.models.config import ConfigError
from showo2_jax.parity.metrics import relative_error
from showo2_jax.parity.sampling import run_sampling_parity


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [5, 8, 64])
def test_chunked_matches_dense_values_and_gradients_under_the_omni_mask(chunk):
  b, l, hq, hkv, d = 2, 37, 4, 2, 8
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32) for h in (hq, hkv, hkv))
  mp = jnp.asarray([[[3, 10], [20, 9]], [[0, 0], [12, 17]]], jnp.int32)   # two blocks; an empty slot
  mask = omni_mask.omni_attention_mask(mp, l)
  w = jnp.asarray(rng.normal(size=(b, l, hq, d)), jnp.float32)

  def loss(impl, q, k, v):
    out = attention.attention(q, k, v, mask, d ** -0.5, impl=impl, chunk_size=chunk)
    return jnp.sum(out * w), out

  (l_d, out_d), g_d = jax.value_and_grad(lambda *a: loss("dense", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (l_c, out_c), g_c = jax.value_and_grad(lambda *a: loss("chunked", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert out_c.shape == out_d.shape and out_c.dtype == out_d.dtype
  assert _rel(out_c, out_d) < 1e-6
  for gc, gd in zip(g_c, g_d):
    assert _rel(gc, gd) < 1e-6


def test_chunked_visits_only_the_key_blocks_the_mask_needs():
  """Per query chunk, the last key block any row may attend to: causal rows stop at
  their own block, a visual block pulls its rows' chunk up to the block's end, and
  a row that may attend to nothing takes every block (dense's uniform average)."""
  mp = jnp.asarray([[[1, 4]]], jnp.int32)                  # visual block [1, 5) of 12
  mask = omni_mask.omni_attention_mask(mp, 12)
  need = attention._key_blocks_needed(mask.reshape(1, 6, 2, 12).swapaxes(0, 1), 2)
  np.testing.assert_array_equal(np.asarray(need), [2, 2, 2, 3, 4, 5])
  empty = mask.at[0, 6].set(False)
  need = attention._key_blocks_needed(empty.reshape(1, 6, 2, 12).swapaxes(0, 1), 2)
  np.testing.assert_array_equal(np.asarray(need), [2, 2, 2, 5, 4, 5])


def test_chunked_matches_dense_with_a_row_that_attends_to_nothing_and_longer_keys():
  """A fully masked row (dense: the uniform average of every value) and Lk > Lq
  (a cached window), values and gradients."""
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(2, 11, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 19, 2, 8)), jnp.float32) for _ in range(2))
  mask = omni_mask.omni_attention_mask(jnp.asarray([[[10, 5]], [[0, 0]]], jnp.int32), 11,
                                       q_positions=jnp.broadcast_to(jnp.arange(8, 19), (2, 11)), kv_len=19)
  mask = mask.at[1, 2].set(False)
  w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def f(impl):
    return jax.value_and_grad(lambda *a: jnp.sum(attention.attention(*a, mask, 0.3, impl=impl, chunk_size=4) * w),
                              argnums=(0, 1, 2))(q, k, v)
  (l_d, g_d), (l_c, g_c) = f("dense"), f("chunked")
  assert abs(float(l_c) - float(l_d)) <= 1e-5 * abs(float(l_d))
  for gc, gd in zip(g_c, g_d):
    assert _rel(gc, gd) < 1e-6


@pytest.mark.slow
def test_chunked_keeps_float32_scores_with_bfloat16_inputs():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 20, 2, 8)), jnp.bfloat16) for _ in range(3))
  mask = omni_mask.omni_attention_mask(jnp.asarray([[[4, 6]]], jnp.int32), 20)
  dense = attention.attention(q, k, v, mask, 8 ** -0.5, impl="dense")
  chunked = attention.attention(q, k, v, mask, 8 ** -0.5, impl="chunked", chunk_size=6)
  assert chunked.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(chunked, np.float32), np.asarray(dense, np.float32))


@pytest.mark.parametrize("impl", [pytest.param("splash", marks=pytest.mark.slow), "flash"])
def test_kernels_keep_float32_scores_with_bfloat16_inputs(impl):
  """`splash` (interpret mode off TPU) and `flash` (tokamax) on bf16 inputs: bf16
  out, within bf16 output rounding (2^-8) plus q pre-scaled in bf16 (splash) of
  `dense`'s float32-score result, not a bf16 score path."""
  b, l, h, d = 1, 130, 2, 16
  rng = np.random.default_rng(5)
  q, k, v = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.bfloat16) for _ in range(3))
  mask = omni_mask.omni_attention_mask(jnp.asarray([[[4, 60]]], jnp.int32), l)
  out = attention.attention(q, k, v, mask, d ** -0.5, impl=impl)
  ref = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
  assert out.dtype == jnp.bfloat16
  assert _rel(out.astype(jnp.float32), ref.astype(jnp.float32)) < 1e-2


def test_unknown_impl_is_a_config_error():
  with pytest.raises(ValueError, match="attention_impl"):
    attention.attention(*(jnp.zeros((1, 2, 1, 4)),) * 3, None, 0.5, impl="flashy")
  with pytest.raises(ConfigError, match="attention_impl"):
    s2.Showo2Config(attention_impl="flashy")


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_semantic_layers_gradients_match_dense_with_chunked_attention():
  """SigLIP's unmasked attention through `chunked` (11 tokens, chunks of 4)."""
  from showo2_jax.models import siglip  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.config import SiglipConfig  # pylint: disable=import-outside-toplevel
  cfg = SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, position_grid=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 16))
  dense = siglip.SiglipEncoder(cfg)
  chunked = siglip.SiglipEncoder(cfg, attention_impl="chunked", attention_chunk_size=4)
  params = dense.init(jax.random.PRNGKey(1), x)["params"]
  w = jax.random.normal(jax.random.PRNGKey(2), (2, 11, 16))

  def loss(model, p, x):
    return jnp.sum(model.apply({"params": p}, x) * w)
  (l_d, g_d), (l_c, g_c) = (jax.value_and_grad(lambda p, x, m=m: loss(m, p, x), argnums=(0, 1))(params, x)
                            for m in (dense, chunked))
  assert abs(float(l_c) - float(l_d)) <= 1e-5 * abs(float(l_d))
  # Against the whole gradient's norm: k_proj's bias has a zero gradient (softmax is
  # shift-invariant per row), so its own relative error is round-off over round-off.
  total = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(g_d))))
  for gc, gd in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_d)):
    assert float(jnp.linalg.norm(gc - gd)) / total < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("impl, options", [("chunked", {"attention_chunk_size": 7}), ("splash", {}),
                                           ("flash", {})])
def test_model_forward_and_gradients_match_dense_on_the_fixture(showo2_fixture_dir, impl, options):
  """The training path (omni mask, both losses; LLM and flow head): `chunked` with
  queries in chunks of 7 (eager), `splash` through the kernel under jit (every layer's
  kernel in interpret mode, ~1 min of CPU), `flash` through tokamax under jit (its
  `xla` implementation on CPU, with the per-query key ranges the GPU kernels take)."""
  cases = np.load(showo2_fixture_dir / "cases.npz")
  config, params = load_original(str(showo2_fixture_dir))
  args = [jnp.asarray(cases[k]) for k in ("text_tokens", "image_latents", "t", "modality_positions")]
  assert args[0].shape[1] > max(7, attention_splash.DECODE_MAX_QUERIES)

  def loss(cfg, p):
    out = s2.Showo2(cfg).apply({"params": p}, *args)
    fl = s2.flow_loss(out["v_tok"], cases["image_labels"], cases["image_masks"], cases["modality_positions"])
    return fl + s2.ntp_loss(out["logits"], cases["text_labels"]), out

  other_cfg = config.replace(attention_impl=impl, **options)
  compile_ = jax.jit if impl in ("splash", "flash") else (lambda f: f)
  (l_d, out_d), g_d = jax.value_and_grad(lambda p: loss(config, p), has_aux=True)(params)
  (l_o, out_o), g_o = compile_(jax.value_and_grad(lambda p: loss(other_cfg, p), has_aux=True))(params)
  if impl == "chunked":
    assert relative_error(out_o["logits"], cases["logits"]) < 1e-4
  for key in ("logits", "v_tok"):
    assert _rel(out_o[key], out_d[key]) < 1e-5, key
  assert abs(float(l_o) - float(l_d)) <= 1e-5 * abs(float(l_d))
  # Per parameter, against the whole gradient's norm: a few params (zero-init
  # adaLN paths of the fixture) have gradients at round-off level themselves.
  total = float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g_d))))
  errs = jax.tree.map(lambda o, d: float(jnp.linalg.norm(o - d)) / total, g_o, g_d)
  worst = max(jax.tree.leaves(errs))
  assert worst < 1e-5, (worst, errs)


@pytest.mark.slow
@pytest.mark.parametrize("impl, options", [("chunked", {"attention_chunk_size": 5}), ("splash", {}),
                                           ("flash", {})])
def test_cached_decoding_and_flow_sampler_match_the_original(showo2_fixture_dir, impl, options):
  """Prefill (in chunks of 5 queries for `chunked`; through the Pallas kernel for
  `splash`, through tokamax for `flash`), then KV-cached steps (t2i flow sampler
  with CFG, greedy understanding; text decoding steps are dense for `splash` and
  `flash`): the original's golden outputs still hold."""
  results = run_sampling_parity(showo2_fixture_dir, attention_impl=impl, **options)
  assert results
  for name, err, threshold in results:
    assert err < threshold, (name, err)
