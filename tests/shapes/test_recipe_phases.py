"""Partial re-runs of the tiny_shapes recipe: recipe.stop_after and recipe.redo."""
import json

import pytest

from configs import tiny_shapes
from showo2_jax.shapes import recipe


def _config(**recipe_options):
  c = tiny_shapes.get_config()
  c.recipe.world.update(dict(num_images=24, num_clips=1, num_heldout=4))
  c.recipe.update(recipe_options)
  return c


def test_stop_after_runs_up_to_that_phase(tmp_path):
  state = recipe.run(_config(stop_after="world"), str(tmp_path))
  assert list(state["phases"]) == ["world"]
  saved = json.loads((tmp_path / recipe.STATE_FILE).read_text())
  assert list(saved["phases"]) == ["world"]
  assert (tmp_path / "world" / "t2i.jsonl").exists() and (tmp_path / "tokenizer").is_dir()


def test_redo_forgets_that_phase_and_every_later_one(tmp_path):
  paths = recipe.Paths(str(tmp_path))
  state = {"final_run": "stage2", "phases": {p: {"seconds": 1.0} for p in recipe.PHASES}}
  for folder in (paths.vae, paths.latents, paths.stage1, paths.stage2):
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "x").write_text("x")
  forgotten = recipe.forget_from(paths, state, "stage1")
  assert forgotten == ["stage1", "stage2", "report"]
  assert list(state["phases"]) == ["world", "vae", "latents"]
  assert json.loads((tmp_path / recipe.STATE_FILE).read_text()) == state
  assert (tmp_path / "vae" / "x").exists() and (tmp_path / "latents" / "x").exists()
  assert not (tmp_path / "stage1").exists() and not (tmp_path / "stage2").exists()


def test_redo_of_a_finished_phase_runs_it_again(tmp_path):
  recipe.run(_config(stop_after="world"), str(tmp_path))
  (tmp_path / "world" / "t2i.jsonl").write_text("")
  state = recipe.run(_config(redo="world", stop_after="world"), str(tmp_path))
  assert list(state["phases"]) == ["world"]
  assert (tmp_path / "world" / "t2i.jsonl").read_text().strip()   # written again


@pytest.mark.parametrize("key", ["redo", "stop_after"])
def test_a_phase_option_that_names_no_phase_is_refused(tmp_path, key):
  with pytest.raises(ValueError, match=f"--config.recipe.{key}=stage3: not a phase"):
    recipe.run(_config(**{key: "stage3"}), str(tmp_path))


def test_posterior_mean_names_latent_jobs():
  assert recipe._latents_option(_config()) == ()
  c = _config()
  c.recipe.latents.posterior_mean = ("captions", "llava")
  assert recipe._latents_option(c) == ("captions", "llava")
  c.recipe.latents.posterior_mean = ("llava", "questions")
  with pytest.raises(ValueError, match="posterior_mean: questions is not a latent job"):
    recipe._latents_option(c)
