"""From-scratch layers start from the original's init laws (spec 7.2 fresh-init facts).

PyTorch's nn.Linear default (kaiming_uniform_(a=sqrt(5)): weight and bias
U(+-1/sqrt(fan_in))) for fusion_proj, diff_proj, time_embed_proj and the flow
head's attention/MLP; Xavier-uniform on the (out, in*k*k) view for the patch
embedders; N(0, 0.02) weights for the time embedder; zero adaLN and final layers.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.models import flow_head as fh
from showo2_jax.models import showo2

KEY = jax.random.PRNGKey(0)


def _params(module, *args):
  return nn.meta.unbox(module.init(KEY, *args)["params"])


def _assert_uniform(x, bound, name):
  x = np.asarray(x).ravel()
  assert np.abs(x).max() <= bound * (1 + 1e-6), name
  assert np.abs(x).max() > 0.95 * bound, name                   # fills the interval
  np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.1, err_msg=name)


@pytest.mark.slow
def test_fusion_and_diff_proj_use_pytorch_linear_default():
  fan_in = 192
  p = _params(showo2.FusionProj(96), jnp.zeros((1, 2, fan_in)))
  _assert_uniform(p["fc1"]["kernel"], 1 / np.sqrt(fan_in), "fusion fc1 kernel")
  _assert_uniform(p["fc1"]["bias"], 1 / np.sqrt(fan_in), "fusion fc1 bias")
  _assert_uniform(p["fc2"]["kernel"], 1 / np.sqrt(96), "fusion fc2 kernel")
  np.testing.assert_array_equal(p["norm"]["scale"], 1.0)
  p = _params(showo2.DiffProj(128), jnp.zeros((1, 2, 64)))
  _assert_uniform(p["fc1"]["kernel"], 1 / np.sqrt(64), "diff fc1")
  _assert_uniform(p["fc2"]["bias"], 1 / np.sqrt(128), "diff fc2 bias")


def test_patch_embed_xavier_on_the_torch_view():
  c_in, k, out = 16, 2, 256
  p = _params(showo2.PatchEmbed(out, k), jnp.zeros((1, 4, 4, c_in)))
  p = p.get("proj", p)
  _assert_uniform(p["kernel"], np.sqrt(6 / (c_in * k * k + out)), "patch kernel")
  np.testing.assert_array_equal(p["bias"], 0.0)


@pytest.mark.slow
def test_time_embedder_and_flow_head_block():
  p = _params(fh.TimestepEmbedder(128, 64), jnp.zeros((3,)))
  np.testing.assert_allclose(np.asarray(p["mlp_0"]["kernel"]).std(), 0.02, rtol=0.1)
  _assert_uniform(p["mlp_0"]["bias"], 1 / np.sqrt(64), "time_embed mlp_0 bias")
  cfg = fh.FlowHeadConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=16)
  head = fh.FlowHead(cfg)
  p = _params(head, jnp.zeros((1, 4, 64)), jnp.zeros((1, 1, 64)), jnp.zeros((1, 4), jnp.int32),
              jnp.arange(4)[None], jnp.ones((1, 4, 4), bool))["layers_0"]
  _assert_uniform(p["self_attn"]["q_proj"]["kernel"], 1 / np.sqrt(64), "q_proj")
  _assert_uniform(p["mlp"]["down_proj"]["kernel"], 1 / np.sqrt(128), "down_proj")
  np.testing.assert_array_equal(p["adaLN_modulation"]["kernel"], 0.0)
