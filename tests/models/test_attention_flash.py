"""`attention_impl="flash"`: tokamax flash attention with the mask as one key range
per query. On CPU the call runs tokamax's `xla` implementation with the same
`Mask(k_start, k_end)` the GPU kernels take, so these tests check our ranges and
the wiring; the Triton / Mosaic GPU kernels themselves need a GPU (run there,
these tests take them; benchmarks/attention_benchmark.py --also flash times
them). The whole model's training path and the cached samplers through `flash`
are test_attention_impl.py's fixture tests."""
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.models import attention, attention_flash, attention_splash, omni_mask
from showo2_jax.sample import prefix
from tests.train import runs


# On a GPU the kernels run; their float32 products may be TF32 (not measured: no GPU
# was lent while writing these), so the comparison there is looser.
ON_GPU = jax.default_backend() == "gpu"
TOL = 1e-2 if ON_GPU else 1e-6


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _qkv(b, lq, lk, hq, hkv, d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(b, l, h, d)), dtype) for l, h in ((lq, hq), (lk, hkv), (lk, hkv)))


def _range_mask(mask):
  start, end = attention_flash.key_ranges(mask)
  k = jnp.arange(mask.shape[-1])
  return (k >= start[..., None]) & (k < end[..., None])


def test_every_mask_we_build_is_one_key_range_per_query():
  """The omni mask (visual blocks, an empty slot, a block at the sequence end), its
  cached windows, and the samplers' left-padded prefill and window masks: the
  ranges reproduce each mask exactly; a mask with a hole is widened (not exact)."""
  mp = jnp.asarray([[[3, 10], [20, 9]], [[0, 0], [12, 17]], [[25, 4], [0, 0]]], jnp.int32)
  masks = [omni_mask.omni_attention_mask(mp, 29),
           omni_mask.omni_attention_mask(mp, 6, q_positions=jnp.broadcast_to(jnp.arange(20, 26), (3, 6)),
                                         kv_len=29)]
  shift = jnp.asarray([0, 3, 7], jnp.int32)
  masks.append(prefix.prefix_mask(shift, mp, 29, 40))
  masks += [prefix.window_mask(shift, 29, 5, 40, bidirectional=bi) for bi in (False, True)]
  for i, mask in enumerate(masks):
    np.testing.assert_array_equal(np.asarray(_range_mask(mask)), np.asarray(mask), err_msg=str(i))
  holed = masks[0].at[0, 10, 4].set(False)
  assert not bool(jnp.all(_range_mask(holed) == holed))


def test_a_query_with_no_allowed_key_gets_the_empty_range():
  mask = jnp.asarray([[[False, True, True, False], [False] * 4, [True] * 4]])
  start, end = attention_flash.key_ranges(mask)
  np.testing.assert_array_equal(np.asarray(start), [[1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(end), [[3, 0, 4]])


def test_flash_matches_dense_values_and_gradients_under_the_omni_mask():
  """GQA (4 query heads on 2 kv heads), visual blocks and an empty slot, and a row
  that may attend to nothing (dense and tokamax's xla path: the uniform average of
  every value; the GPU kernels would give zeros there)."""
  b, l, hq, hkv, d = 2, 37, 4, 2, 16
  q, k, v = _qkv(b, l, l, hq, hkv, d)
  mp = jnp.asarray([[[3, 10], [20, 9]], [[0, 0], [12, 17]]], jnp.int32)
  mask = omni_mask.omni_attention_mask(mp, l)
  if not ON_GPU:
    mask = mask.at[1, 2].set(False)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(b, l, hq, d)), jnp.float32)

  def loss(impl, q, k, v):
    out = attention.attention(q, k, v, mask, d ** -0.5, impl=impl)
    return jnp.sum(out * w), out

  grad = lambda impl: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)
  (l_d, out_d), g_d = grad("dense")
  (l_f, out_f), g_f = grad("flash")
  assert out_f.shape == out_d.shape and out_f.dtype == out_d.dtype
  assert _rel(out_f, out_d) < TOL
  for gf, gd in zip(g_f, g_d):
    assert _rel(gf, gd) < TOL


def test_decoding_steps_use_dense_and_cached_blocks_use_flash():
  """A KV-cached step (Lq <= DECODE_MAX_QUERIES) is dense; a block of queries
  against a longer cache (the cached flow sampler) goes through tokamax, with a
  mask that only broadcasts to (B, Lq, Lk)."""
  b, lk, h, d = 2, 40, 2, 16
  mp = jnp.asarray([[[20, 12]], [[22, 10]]], jnp.int32)
  for lq, through_tokamax in ((1, False), (attention_splash.DECODE_MAX_QUERIES, False), (12, True)):
    q, k, v = _qkv(b, lq, lk, h, h, d, seed=3)
    qpos = jnp.broadcast_to(jnp.arange(20, 20 + lq, dtype=jnp.int32), (b, lq))
    mask = omni_mask.omni_attention_mask(mp, lq, q_positions=qpos, kv_len=lk)
    if lq == 1:
      mask = mask[:1]
    fn = lambda q, k, v, m: attention.attention(q, k, v, m, d ** -0.5, impl="flash")  # noqa: E731
    jaxpr = str(jax.make_jaxpr(fn)(q, k, v, mask))
    assert ("argmax" in jaxpr) == through_tokamax, lq          # key_ranges runs only for tokamax
    ref = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
    assert _rel(fn(q, k, v, mask), ref) < TOL, lq


ON_A_MESH = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from showo2_jax import sharding
    from showo2_jax.models import attention, omni_mask
    assert jax.device_count() == 8
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    b, l, hq, hkv, d = 4, 30, 4, 2, 8
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32) for h in (hq, hkv, hkv))
    mp = jnp.asarray([[[5, 9]], [[0, 0]], [[2, 20]], [[10, 3]]], jnp.int32)
    mask = omni_mask.omni_attention_mask(mp, l)
    fn = jax.jit(lambda q, k, v: attention.attention(q, k, v, mask, d ** -0.5, impl="flash"))
    with jax.set_mesh(mesh):
      jaxpr = str(jax.make_jaxpr(fn)(q, k, v))
      out = fn(q, k, v)
    ref = attention.attention(q, k, v, mask, d ** -0.5, impl="dense")
    print("SHARD_MAP", "shard_map" in jaxpr, "'tensor'" in jaxpr, "('data', 'fsdp')" in jaxpr)
    print("REL", float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)))
""")


@pytest.mark.slow
def test_flash_under_a_mesh_runs_in_shard_map_with_rows_and_heads_split():
  """8 fake CPU devices as data=2 x fsdp=2 x tensor=2: rows over data/fsdp, heads
  over tensor, the same values as without a mesh."""
  proc = subprocess.run([sys.executable, "-c", ON_A_MESH], env=runs.env(8), cwd=runs.REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:4] in ("SHAR", "REL "))
  assert out["SHARD_MAP"] == "True True True"
  assert float(out["REL"]) < 1e-6


def test_an_unknown_tokamax_implementation_names_what_there_is():
  q, k, v = _qkv(1, 12, 12, 2, 2, 8)
  with pytest.raises(ValueError, match="no attention implementation.*'xla'"):
    attention_flash.flash_attention(q, k, v, None, 0.3, implementations=("cuda_magic",))


def test_flash_on_tpu_points_to_splash(monkeypatch):
  monkeypatch.setattr(attention_splash, "_platform", lambda: "tpu")
  q, k, v = _qkv(1, 12, 12, 2, 2, 8)
  with pytest.raises(ValueError, match="attention_impl=splash"):
    attention_flash.flash_attention(q, k, v, None, 0.3)


def test_flash_without_tokamax_is_a_config_error(monkeypatch):
  """Checked when the model config is built, before anything is compiled."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from showo2_jax.models import showo2 as s2  # pylint: disable=import-outside-toplevel
  from showo2_jax.models.config import ConfigError  # pylint: disable=import-outside-toplevel
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tokamax" else real(name, *a))
  with pytest.raises(ConfigError, match=r"pip install -e '.\[gpu\]'"):
    s2.Showo2Config(attention_impl="flash")

