"""Remat policies by name (`model.remat_policy`): each keeps what it says, so the
step's matmul FLOPs (jaxpr, recompute included) order as the policies do."""
import jax
import pytest

from showo2_jax import config_lib
from showo2_jax.models import layers
from showo2_jax.train import aot, flops


def _matmul_flops(policy: str) -> float:
  c = config_lib.load_config("tiny_train")
  c.model.remat_policy, c.model.scan_layers = policy, True
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  traced, _ = aot.trace_train_step(c, jax.devices()[:1])
  return flops.jaxpr_matmul_flops(traced.jaxpr)


def test_policies_recompute_what_they_do_not_save():
  f = {p: _matmul_flops(p) for p in ("none", "dots", "save_attn", "save_qkv_proj", "full")}
  assert f["dots"] == f["none"], f                    # every matmul output kept
  # q/k/v kept: their projections are not recomputed, the MLP and o_proj are
  assert f["none"] < f["save_attn"] <= f["save_qkv_proj"] < f["full"], f


def test_unknown_policy_names_the_choices():
  with pytest.raises(ValueError, match="save_qkv_proj"):
    layers.remat_policy("qkv")
