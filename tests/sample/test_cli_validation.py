"""Bad inference inputs fail at once with one line naming the flag, exit 1, no traceback,
before anything is loaded or generated; good media round-trips through the commands."""
import math

import numpy as np
import pytest

from showo2_jax.cli import main as cli
from showo2_jax.data import media as data_media
from showo2_jax.data import tasks
from showo2_jax.sample import media
from showo2_jax.sample.pipeline import FlowSampling, Pipeline
from showo2_jax.sample.tokens import TokenSampling

from test_cli import assets  # noqa: F401  (module fixture: tiny checkpoint, tokenizer, VAE)


def _run(capsys, *argv):
  rc = cli.main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.fixture
def no_loading(monkeypatch):
  """Fails the test if a command gets as far as loading the model."""
  def load(*a, **k):
    raise AssertionError("the model was loaded before the flags were checked")
  monkeypatch.setattr(Pipeline, "load", load)


@pytest.mark.parametrize("flags,expect", [
    (["--steps", "0"], "--steps 0: must be at least 2"),
    (["--steps", "1"], "--steps 1: must be at least 2"),
    (["--resolution", "0"], "--resolution 0: must be a positive multiple of 8"),
    (["--resolution", "-64"], "--resolution -64"),
    (["--guidance", "nan"], "--guidance nan: must be a finite number"),
    (["--guidance", "inf"], "--guidance inf"),
    (["--shift", "0"], "--shift 0.0: must be a finite number > 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--num-frames", "4"], "--num-frames 4: must be 1 + 4k"),
    (["--fps", "0"], "--fps 0.0"),
    (["--max-seq-len", "0"], "--max-seq-len 0"),
])
def test_generate_refuses_bad_flags_before_loading(assets, capsys, no_loading, flags, expect):
  rc, out, err = _run(capsys, "generate", *assets["model"], "a dog", "--no-progress",
                      "--out", str(assets["root"] / "never"), *flags)
  assert rc == 1, err
  assert expect in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1 and out == ""


def test_generate_refuses_an_out_that_is_a_file_before_loading(assets, capsys, no_loading):
  existing = assets["root"] / "a_file.txt"
  existing.write_text("keep me")
  rc, _, err = _run(capsys, "generate", *assets["model"], "a dog", "--out", str(existing))
  assert rc == 1 and "--out" in err and "is a file" in err and "Traceback" not in err
  assert existing.read_text() == "keep me"


@pytest.mark.parametrize("flags,expect", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--temperature", "-1"], "--temperature -1.0"),
    (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k -2"),
    (["--resolution", "0"], "--resolution 0"),
    (["--num-frames", "0"], "--num-frames 0"),
    (["--json", "/nonexistent_folder_showo2/answers.json"], "--json: the folder"),
])
def test_understand_refuses_bad_flags_before_loading(assets, capsys, no_loading, flags, expect):
  rc, _, err = _run(capsys, "understand", *assets["model"], "--image", assets["image"],
                    "--question", "What is it?", "--no-progress", *flags)
  assert rc == 1, err
  assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,expect", [
    (["--steps", "0"], "--steps 0"), (["--guidance", "nan"], "--guidance nan"),
    (["--rounds", "0"], "--rounds 0"), (["--top-p", "2"], "--top-p 2.0")])
def test_mixed_refuses_bad_flags_before_loading(assets, capsys, no_loading, flags, expect):
  rc, _, err = _run(capsys, "mixed", *assets["model"], "--out", str(assets["root"] / "never"),
                    *flags)
  assert rc == 1 and expect in err and "Traceback" not in err


def test_sampling_settings_refuse_nan_and_too_few_steps():
  for bad in (dict(num_steps=0), dict(guidance_scale=math.nan), dict(time_shifting_factor=0.0)):
    with pytest.raises(ValueError):
      FlowSampling(**bad)
  with pytest.raises(ValueError, match="temperature"):
    TokenSampling(temperature=math.nan)


@pytest.mark.slow
def test_understand_refuses_an_overlong_question_unless_truncate(assets, capsys):
  question = "describe every detail of the picture please " * 120  # > 512 tokens
  rc, out, err = _run(capsys, "understand", *assets["model"], "--image", assets["image"],
                      "--question", question, "--max-new-tokens", "2", "--no-progress")
  assert rc == 1 and out == ""
  assert "longer than the 512" in err and "--truncate" in err and "Traceback" not in err
  rc, out, err = _run(capsys, "understand", *assets["model"], "--image", assets["image"],
                      "--question", question, "--max-new-tokens", "2", "--no-progress",
                      "--truncate")
  assert rc == 0, err
  assert out.count("A: ") == 1


def _write_clip(path, frames=9, size=64):
  rng = np.random.default_rng(0)
  video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
  written = media.save_video(video, path, fps=8)
  if written.suffix != ".mp4":
    pytest.skip("no MP4 backend installed (imageio-ffmpeg or av)")
  return written


@pytest.mark.slow
def test_mp4_frames_are_counted_and_sampled(tmp_path, recwarn):
  clip = _write_clip(tmp_path / "clip.mp4", frames=9)
  frames = data_media.read_video_frames(str(clip), 3)
  assert len(frames) == 3 and frames[0].size == (64, 64)
  assert data_media._count_frames(str(clip)) == 9
  # The video training pipeline reads the same way: (1, 3, F, R, R) pixels.
  pixels = tasks.pixel_loader("video_text", 32, num_frames=5)({"path": str(clip)})
  assert pixels.shape == (1, 3, 5, 32, 32)
  # No "os.fork() ... deadlock" warning from the ffmpeg subprocess.
  assert not [w for w in recwarn if "os.fork" in str(w.message)]


@pytest.mark.slow
def test_understand_video_reads_the_mp4_that_generate_writes(assets, capsys, tmp_path):
  clip = _write_clip(tmp_path / "gen.mp4", frames=5)
  rc, out, err = _run(capsys, "understand", *assets["model"], "--video", str(clip),
                      "--num-frames", "2", "--question", "What happens?",
                      "--max-new-tokens", "2", "--no-progress")
  assert rc == 0, err
  assert out.count("A: ") == 1


def test_understand_progress_bar_has_a_total_and_stays(assets, capsys):
  rc, out, err = _run(capsys, "understand", *assets["model"], "--image", assets["image"],
                      "--question", "What is it?", "--max-new-tokens", "3")
  assert rc == 0, err
  last = err.replace("\r", "\n").strip().splitlines()
  final = [line for line in last if line.startswith("decoding")][-1]
  assert "3/3" in final and "100%" in final  # a total, reached even when eos stops it early


def test_inference_commands_do_not_print_library_info_lines(assets, capsys, caplog, monkeypatch):
  """Orbax (via absl) logs ~10 INFO lines per checkpoint load; JAX logs its backend probing."""
  monkeypatch.setattr(Pipeline, "generate",
                      lambda self, prompts, *a, **k: np.zeros((len(prompts),) + self.latent_shape(),
                                                              np.float32))
  orbax = list(assets["model"])
  orbax[1] = assets["orbax"]
  orbax = orbax[:4] + orbax[6:]  # no --vae: latents are saved, nothing decoded
  with caplog.at_level("INFO"):
    rc, _, err = _run(capsys, "generate", *orbax, "a dog", "--no-progress",
                      "--out", str(assets["root"] / "quiet"))
  assert rc == 0, err
  noisy = [r for r in caplog.records if r.name.split(".")[0] in ("absl", "orbax")
           or r.name == "jax._src.xla_bridge"]
  assert not [r for r in noisy if r.levelno < 30], [r.getMessage()[:80] for r in noisy][:5]
  assert any("loaded" in r.getMessage() for r in caplog.records)  # ours still speak
