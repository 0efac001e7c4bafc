"""The main job, shortened: `train --config tiny_shapes` end to end, then the commands on it.

One run (a few minutes on 2 cores), shared by the tests below: every phase through
the real code paths, its files, a rerun that does nothing, eval-shapes, and
generate / understand reading the workdir directly.
"""
import json
import subprocess
import sys

import pytest

from tests.train import runs

SHORT = ("--config.recipe.world.num_images=1000", "--config.recipe.vae.num_steps=150",
         "--config.recipe.stage1.num_steps=200", "--config.recipe.stage2.num_steps=200",
         "--config.recipe.report.num_eval=12")


def _cli(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "showo2_jax.cli.main", *args], env=runs.env(1),
                        cwd=runs.REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("shapes") / "run"
  out = _cli("train", "--config", "tiny_shapes", "--workdir", str(wd), *SHORT, timeout=1500)
  assert out.returncode == 0, out.stderr[-4000:]
  return wd, out.stderr


@pytest.mark.slow
def test_tiny_shapes_run_files_and_commands(shapes_run, tmp_path):
  wd, err = shapes_run
  for phase in ("world", "vae", "latents", "stage1", "stage2", "report"):
    assert f"{phase} done in" in err, phase
  assert "[stage2] compiling the train step" in err and "[stage2] step 200/200  loss" in err
  for name in ("samples.png", "answers.txt", "loss.png", "metrics.json", "phases.json"):
    assert (wd / name).stat().st_size > 0, name
  for phase in ("vae", "stage1", "stage2"):
    assert list((wd / phase).glob("events.out.tfevents*")), phase
    assert (wd / phase / "checkpoints").is_dir()
  assert list((wd / "latents" / "llava").glob("*.array_record"))
  m = json.loads((wd / "metrics.json").read_text())["eval"]
  assert set(m) == {"gen_colour", "gen_shape", "und_colour", "und_shape"}

  again = _cli("train", "--config", "tiny_shapes", "--workdir", str(wd), *SHORT)
  assert again.returncode == 0 and "this run is complete" in again.stderr, again.stderr[-2000:]

  ev = _cli("eval-shapes", "--workdir", str(wd), "--num", "6", "--json", str(tmp_path / "e.json"))
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert set(json.loads((tmp_path / "e.json").read_text())) >= {"gen_colour", "und_shape"}

  gen = _cli("generate", "--checkpoint", str(wd), "a red circle", "--out", str(tmp_path / "g"),
             "--no-progress")
  assert gen.returncode == 0, gen.stderr[-3000:]
  assert (tmp_path / "g" / "00000.png").exists()
  und = _cli("understand", "--checkpoint", str(wd), "--image",
             str(wd / "world" / "images" / "000000.png"), "--question", "What colour is the shape?",
             "--no-progress")
  assert und.returncode == 0, und.stderr[-3000:]
  assert "A: " in und.stdout
