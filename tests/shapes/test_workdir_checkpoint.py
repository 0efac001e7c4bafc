"""A training workdir is a checkpoint for the inference commands."""
import json

import jax
import numpy as np
import pytest

from showo2_jax.convert import loading
from showo2_jax.sample import cli_args
from showo2_jax.shapes import recipe


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A real tiny_train run of 2 steps (config.json + checkpoints/2)."""
  from tests.train import runs
  wd = tmp_path_factory.mktemp("run")
  runs.run(wd, "--config.train.num_steps=2", "--config.checkpoint.every_steps=2",
           "--config.train.tensorboard=false")
  return wd


@pytest.mark.slow
def test_workdir_loads_its_latest_params(workdir):
  from showo2_jax.convert import orbax_io, training_run
  assert loading.resolve_training_run(str(workdir)) == str(workdir)
  config, params = loading.load_showo2(str(workdir))
  want_cfg = training_run.run_model_config(str(workdir))
  assert config.llm == want_cfg.llm
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  want = orbax_io.restore_run_params(str(workdir), abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # `workdir` is a training subprocess; test_not_a_workdir stays fast
def test_recipe_dir_stands_for_its_final_phase(workdir, tmp_path):
  (tmp_path / "stage2").symlink_to(workdir, target_is_directory=True)
  (tmp_path / recipe.STATE_FILE).write_text(json.dumps({"final_run": "stage2", "phases": {}}))
  assert loading.resolve_training_run(str(tmp_path)) == str(tmp_path / "stage2")


def test_not_a_workdir(tmp_path):
  assert loading.resolve_training_run(str(tmp_path)) is None
  (tmp_path / "config.json").write_text("{}")
  assert loading.resolve_training_run(str(tmp_path)) is None   # no checkpoints/


@pytest.mark.slow  # `workdir` is a training subprocess
def test_cli_takes_tokenizer_and_vae_from_the_run(workdir, tmp_path):
  cfg = json.loads((workdir / "config.json").read_text())
  cfg["tokenizer_path"], cfg["vae_checkpoint"] = "/tok", "/vae"
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(cfg))
  (run / "checkpoints").symlink_to(workdir / "checkpoints", target_is_directory=True)
  args = type("A", (), dict(checkpoint=str(run), tokenizer=None, vae=None, config=None))()
  cli_args.fill_from_training_run(args)
  assert (args.tokenizer, args.vae) == ("/tok", "/vae")
  assert cli_args.config_defaults(args)["resolution"] == cfg["resolution"]
  plain = type("A", (), dict(checkpoint=str(tmp_path), tokenizer=None, vae=None, config=None))()
  with pytest.raises(cli_args.InferenceSetupError, match="--tokenizer is required"):
    cli_args.fill_from_training_run(plain)


def test_an_unfinished_recipe_workdir_says_so(tmp_path):
  """A tiny_shapes workdir stopped before any Show-o2 phase: the error names that, not --tokenizer."""
  (tmp_path / "phases.json").write_text(json.dumps({"final_run": "stage2", "phases": {"world": {}}}))
  args = type("A", (), dict(checkpoint=str(tmp_path), tokenizer=None, vae=None, config=None))()
  with pytest.raises(cli_args.InferenceSetupError, match="no trained Show-o2 phase yet"):
    cli_args.fill_from_training_run(args)
