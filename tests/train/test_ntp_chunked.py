"""The lm_head + NTP loss computed only where labels exist equals the full-logits loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.models.showo2 import Showo2, ntp_loss, ntp_loss_from_hidden
from tests.sample.tiny_model import random_params, tiny_config


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model = Showo2(config)
  params = jax.tree.map(jnp.asarray, random_params(config))
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((3, 37, config.llm.hidden_size)), jnp.float32)
  labels = rng.integers(0, config.llm.vocab_size, (3, 37))
  labels[rng.random((3, 37)) < 0.7] = -100        # most positions have no target
  labels[2] = -100                                 # a row with none at all
  return model, params, hidden, jnp.asarray(labels, jnp.int32)


def _losses(model, params, hidden, labels, chunk):
  def full(p, h):
    return ntp_loss(model.apply({"params": p}, h, method=Showo2.logits), labels)

  def chunked(p, h):
    head = lambda x: model.apply({"params": p}, x, method=Showo2.logits)  # noqa: E731
    return ntp_loss_from_hidden(head, h, labels, chunk_size=chunk)
  return (jax.value_and_grad(full, argnums=(0, 1))(params, hidden),
          jax.value_and_grad(chunked, argnums=(0, 1))(params, hidden))


@pytest.mark.parametrize("chunk", [8, 256])
def test_value_and_gradients_match_full_logits(setup, chunk):
  model, params, hidden, labels = setup
  (v_full, g_full), (v_chunk, g_chunk) = _losses(model, params, hidden, labels, chunk)
  assert float(v_full) > 1.0
  np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
  # the tied embedding receives both the head's and no other gradient here
  emb = g_chunk[0]["showo"]["model"]["embed_tokens"]["embedding"]
  assert float(jnp.abs(emb).sum()) > 0


def test_no_labels_gives_zero(setup):
  model, params, hidden, labels = setup
  none = jnp.full_like(labels, -100)
  head = lambda x: model.apply({"params": params}, x, method=Showo2.logits)  # noqa: E731
  assert float(ntp_loss_from_hidden(head, hidden, none, chunk_size=16)) == 0.0
  assert float(ntp_loss(head(hidden), none)) == 0.0
