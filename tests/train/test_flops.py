"""The model-FLOP formula split by part sums to the formula."""
import pytest

from showo2_jax.config_lib import load_config
from showo2_jax.models.config import Showo2Config
from showo2_jax.train import flops


@pytest.mark.parametrize("name", ["small_train", "stage2_1p5b:b"])
def test_parts_sum_to_the_train_flops(name):
  c = load_config(name)
  model = Showo2Config.from_config_dict(c.model)
  parts = flops.train_flops_by_part(model, 1024, 1, 2)
  assert set(parts) == {"LLM attention", "LLM MLP", "lm_head", "SigLIP", "flow head attention",
                        "flow head rest", "projector/STF"}
  assert all(v > 0 for v in parts.values())
  total = flops.train_flops_per_step(model, 1024, 1, 2)
  assert sum(parts.values()) == pytest.approx(total, rel=1e-12)
