"""Per-image t and noise, understanding rows, and the clean-context rule (spec 4.6, 5.2)."""
import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.flow import transport
from showo2_jax.train import noising

# One compiled program per setting instead of op-by-op dispatch (seconds on CPU).
noise_batch = jax.jit(noising.noise_batch,
                      static_argnames=("und_max_t0", "shift_mu", "clean_context_prob"))


def _batch(b=4, m=3, l=40):
  mp = np.zeros((b, m, 2), np.int32)
  for i in range(b):
    for j in range(m if i else 1):          # row 0 has a single image
      mp[i, j] = (2 + 12 * j, 10)
  masks = np.zeros((b, l), np.int32)
  for i in range(b):
    for o, n in mp[i]:
      masks[i, o:o + n] = 1
  latents = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (b, m, 4, 4, 4)))
  return latents, jnp.asarray(mp), jnp.asarray(masks)


def test_und_rows_are_clean_and_leave_the_flow_loss():
  latents, mp, masks = _batch()
  is_und = jnp.array([1, 0, 1, 0])
  out = noise_batch(jax.random.PRNGKey(0), latents, mp, masks, is_und,
                    shift_mu=float(transport.resolution_shift_mu(730)))
  t = out.t.reshape(4, 3)
  assert np.all(np.asarray(t[0]) == 1.0) and np.all(np.asarray(t[2]) == 1.0)
  assert np.all(np.asarray(t[1]) < 1.0)
  np.testing.assert_array_equal(out.x_t.reshape(latents.shape)[0], latents[0])
  assert int(out.image_masks[0].sum()) == 0 and int(out.image_masks[1].sum()) == 30
  # x_t = t x1 + (1 - t) x0 and u = x1 - x0  <=>  x1 - x_t = (1 - t) u
  x1 = latents.reshape(out.u_t.shape)
  np.testing.assert_allclose(x1 - out.x_t, (1 - out.t)[:, None, None, None] * out.u_t, atol=1e-5)


def test_clean_context_keeps_the_last_image_noised():
  latents, mp, masks = _batch()
  is_und = jnp.zeros(4, jnp.int32)
  seen_idx = set()
  for seed in range(40):
    out = noise_batch(jax.random.PRNGKey(seed), latents, mp, masks, is_und,
                      clean_context_prob=0.7)
    t = np.asarray(out.t.reshape(4, 3))
    assert np.all(t[0, 0] < 1.0)               # a lone image is never context
    for i in range(1, 4):
      clean = t[i] == 1.0
      assert not clean[2]                       # the last image is always generated
      k = int(clean.sum())
      assert np.all(clean[:k]) and not np.any(clean[k:])   # a prefix
      seen_idx.add(k)
      for j in range(k):
        o = 2 + 12 * j
        assert int(out.image_masks[i, o:o + 10].sum()) == 0
        np.testing.assert_array_equal(out.x_t.reshape(latents.shape)[i, j], latents[i, j])
      assert int(out.image_masks[i].sum()) == 10 * (3 - k)
  assert seen_idx == {0, 1, 2}
