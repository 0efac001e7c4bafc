"""A training run's params go out as Orbax, then to PyTorch with the original keys."""
import numpy as np
import pytest

from showo2_jax.cli.main import main
from showo2_jax.convert import checkpoint_io, orbax_io


@pytest.mark.slow
def test_export_run_then_to_torch(tmp_path):
  run = tmp_path / "run"
  assert main(["train", "--config", "tiny_train", "--workdir", str(run), "--config.train.num_steps=3",
               "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=False"]) == 0
  assert main(["convert", "export-run", "--workdir", str(run), "--out", str(tmp_path / "orbax")]) == 0
  kind, config, params = orbax_io.restore_params(str(tmp_path / "orbax"))
  assert kind == "showo2" and config.llm.hidden_size == 64
  assert main(["convert", "to-torch", "--orbax", str(tmp_path / "orbax"), "--out", str(tmp_path / "torch")]) == 0
  with checkpoint_io.StateDict(str(tmp_path / "torch")) as sd:
    np.testing.assert_array_equal(sd["fusion_proj.1.weight"], np.asarray(params["fusion_proj"]["fc1"]["kernel"]).T)
    assert "showo.model.layers.1.mlp.down_proj.weight" in sd


def test_export_run_of_a_non_run_fails_clearly(tmp_path):
  assert main(["convert", "export-run", "--workdir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
