"""Attention activations carry logical names: query heads and the attention output
over `tensor`, rows over (data, fsdp), kv heads replicated."""
import jax
import jax.numpy as jnp

from showo2_jax import sharding
from showo2_jax.models import layers


def test_qkv_and_output_are_constrained_heads_over_tensor():
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  attn = layers.GQAttention(hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8)
  x = jnp.ones((2, 5, 32))
  rope = layers.rope_cos_sin(jnp.broadcast_to(jnp.arange(5), (2, 5)),
                             layers.rope_inv_freq(8, 10000.0), jnp.float32)
  params = attn.init(jax.random.PRNGKey(0), x, rope, None)
  with jax.set_mesh(mesh), sharding.axis_rules():
    text = str(jax.make_jaxpr(lambda p: attn.apply(p, x, rope, None))(params))
  heads = "P(('data', 'fsdp'), None, 'tensor', None)"
  kv = "P(('data', 'fsdp'), None, None, None)"
  assert text.count(heads) >= 2, text          # q and the output
  assert text.count(kv) >= 2, text             # k and v
