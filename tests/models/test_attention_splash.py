"""`attention_impl="splash"`: the Pallas TPU kernel (interpret mode on CPU) against
`dense`, forward and backward, with the omni mask as a block-sparse mask. Every
kernel test compiles the kernel in interpret mode (> 10 s on 2 cores): slow. The whole
model's training path and the cached samplers through the kernel are
test_attention_impl.py's fixture tests, parametrised over the implementations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.models import attention, attention_splash, omni_mask


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _qkv(b, lq, lk, hq, hkv, d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(b, l, h, d)), dtype) for l, h in ((lq, hq), (lk, hkv), (lk, hkv)))


@pytest.mark.slow
def test_splash_matches_dense_values_and_gradients_under_the_omni_mask():
  """GQA (4 query heads on 2 kv heads), two rows with different visual blocks (one
  crossing a block boundary, one empty slot), Lq = 200 padded to two 128-blocks."""
  b, l, hq, hkv, d = 2, 200, 4, 2, 16
  q, k, v = _qkv(b, l, l, hq, hkv, d)
  mp = jnp.asarray([[[3, 100], [150, 40]], [[0, 0], [12, 170]]], jnp.int32)
  mask = omni_mask.omni_attention_mask(mp, l)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(b, l, hq, d)), jnp.float32)

  def loss(impl, q, k, v):
    out = attention.attention(q, k, v, mask, d ** -0.5, impl=impl, chunk_size=128)
    return jnp.sum(out * w), out

  grad = lambda impl: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)
  (l_d, out_d), g_d = grad("dense")
  (l_s, out_s), g_s = grad("splash")
  assert out_s.shape == out_d.shape and out_s.dtype == out_d.dtype
  assert _rel(out_s, out_d) < 1e-5
  for gs, gd in zip(g_s, g_d):
    assert _rel(gs, gd) < 1e-5


@pytest.mark.slow
def test_blocks_the_mask_empties_are_skipped():
  """Keys and values of the second 128-block are NaN: the first query block (causal
  there, its visual block inside it) never reads them under splash, while the
  dense softmax multiplies them by zero and turns NaN."""
  b, l, h, d = 1, 256, 2, 8
  q, k, v = _qkv(b, l, l, h, h, d, seed=2)
  k = k.at[:, 128:].set(jnp.nan)
  v = v.at[:, 128:].set(jnp.nan)
  mask = omni_mask.omni_attention_mask(jnp.asarray([[[10, 50]]], jnp.int32), l)
  splash = attention.attention(q, k, v, mask, d ** -0.5, impl="splash", chunk_size=128)
  dense = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
  assert bool(jnp.all(jnp.isfinite(splash[:, :128])))
  assert not bool(jnp.all(jnp.isfinite(dense[:, :128])))
  good = jnp.nan_to_num(k), jnp.nan_to_num(v)
  ref = attention.attention(q, *good, mask, d ** -0.5, impl="dense")
  assert _rel(splash[:, :128], ref[:, :128]) < 1e-5


@pytest.mark.slow
def test_cached_steps_use_dense_and_cached_blocks_use_splash():
  """A KV-cached decoding step (Lq <= DECODE_MAX_QUERIES) is dense attention; a
  block of queries against a longer cache (the cached flow sampler) is the kernel,
  with Lq != Lk and a mask that only broadcasts to (B, Lq, Lk)."""
  b, lk, h, d = 2, 150, 2, 8
  mp = jnp.asarray([[[100, 20]], [[90, 30]]], jnp.int32)
  for lq, kernel in ((1, False), (attention_splash.DECODE_MAX_QUERIES, False), (20, True)):
    q, k, v = _qkv(b, lq, lk, h, h, d, seed=3)
    qpos = jnp.broadcast_to(jnp.arange(100, 100 + lq, dtype=jnp.int32), (b, lq))
    mask = omni_mask.omni_attention_mask(mp, lq, q_positions=qpos, kv_len=lk)
    if lq == 1:
      mask = mask[:1]                        # (1, 1, Lk): broadcasts over the batch
    fn = lambda q, k, v, m: attention.attention(q, k, v, m, d ** -0.5, impl="splash")  # noqa: E731
    assert ("pallas_call" in str(jax.make_jaxpr(fn)(q, k, v, mask))) == kernel, lq
    ref = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
    assert _rel(fn(q, k, v, mask), ref) < 1e-5, lq


@pytest.mark.slow
def test_splash_under_a_mesh_runs_in_shard_map():
  """Under `jax.set_mesh` the kernel is wrapped in shard_map (rows over data/fsdp)."""
  from showo2_jax import sharding
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  b, l, h, d = 2, 130, 2, 8
  q, k, v = _qkv(b, l, l, h, h, d, seed=4)
  mask = omni_mask.omni_attention_mask(jnp.asarray([[[5, 9]], [[0, 0]]], jnp.int32), l)
  fn = jax.jit(lambda q, k, v: attention.attention(q, k, v, mask, d ** -0.5, impl="splash"))
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    out = fn(q, k, v)
  ref = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
  assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("size, lq, lk, want", [(512, 200, 300, (256, 384)), (128, 1000, 1000, (128, 128)),
                                                (100, 40, 40, (128, 128))])
def test_block_sizes_are_whole_lanes_capped_at_the_sequence(size, lq, lk, want):
  assert attention_splash.block_sizes(lq, lk, size) == want

