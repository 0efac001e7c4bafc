"""Omni-attention mask and slot bookkeeping against literal loop implementations."""
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import omni_mask


def naive_mask(modality_positions, seq_len):
  """The original's builder: lower-triangular ones, then each block square set."""
  b = modality_positions.shape[0]
  m = np.tril(np.ones((b, seq_len, seq_len), bool))
  for i in range(b):
    for o, n in modality_positions[i]:
      if n > 0:
        m[i, o:o + n, o:o + n] = True
  return m


def naive_scatter_slot(modality_positions, seq_len):
  """Sequential writes: time token at o (even for empty slots), then the block."""
  b = modality_positions.shape[0]
  out = -np.ones((b, seq_len), int)
  for i in range(b):
    for j, (o, n) in enumerate(modality_positions[i]):
      out[i, o] = j
      out[i, o + 1:o + n] = j
  return out


def random_positions(rng, b, m, seq_len):
  mp = np.zeros((b, m, 2), np.int32)
  for i in range(b):
    for j in range(m):
      if rng.random() < 0.7:
        n = int(rng.integers(1, 10))
        mp[i, j] = (int(rng.integers(0, seq_len - n)), n)
  return mp


def test_mask_matches_the_fixture(showo2_fixture_dir):
  cases = np.load(showo2_fixture_dir / "cases.npz")
  for prefix in ("", "video_"):
    mp = cases[f"{prefix}modality_positions"]
    ref = cases[f"{prefix}omni_mask"][:, 0]
    np.testing.assert_array_equal(np.asarray(omni_mask.omni_attention_mask(jnp.asarray(mp), ref.shape[-1])), ref)


def test_mask_and_slots_match_loops_on_random_overlapping_layouts():
  rng = np.random.default_rng(0)
  for _ in range(20):
    mp = random_positions(rng, 3, 4, 40)
    np.testing.assert_array_equal(np.asarray(omni_mask.omni_attention_mask(jnp.asarray(mp), 40)),
                                  naive_mask(mp, 40))
    pos = jnp.broadcast_to(jnp.arange(40), (3, 40))
    np.testing.assert_array_equal(np.asarray(omni_mask.scatter_slot_index(jnp.asarray(mp), pos)),
                                  naive_scatter_slot(mp, 40))


def test_windowed_mask_is_a_slice_of_the_full_mask():
  mp = np.array([[[3, 6]], [[5, 6]]], np.int32)
  full = np.asarray(omni_mask.omni_attention_mask(jnp.asarray(mp), 16))
  q = jnp.broadcast_to(jnp.arange(4, 12), (2, 8))
  window = np.asarray(omni_mask.omni_attention_mask(jnp.asarray(mp), 8, q_positions=q, kv_len=16))
  np.testing.assert_array_equal(window, full[:, 4:12])
