"""`showo2-jax generate / understand / mixed` on a checkpoint written by the test."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from showo2_jax.cli import main as cli
from showo2_jax.convert import orbax_io
from showo2_jax.data import testing

from tiny_model import random_params, tiny_config, write_original_dir


@pytest.fixture(scope="module")
def assets(tmp_path_factory, wan_vae_fixture_dir):
  """An original-layout Show-o2 directory of random tiny weights, a tokenizer, the VAE."""
  root = tmp_path_factory.mktemp("cli")
  ckpt = root / "showo2"
  config = tiny_config()
  params = random_params(config)
  write_original_dir(ckpt, config, params)
  orbax_io.save_params(str(root / "orbax"), params, config)
  tok = testing.build_test_tokenizer(root / "tokenizer")
  image = root / "in.png"
  testing.random_image(np.random.default_rng(0), 72, 64).save(image)
  return {"root": root, "model": ["--checkpoint", str(ckpt), "--tokenizer", tok,
                                  "--vae", str(wan_vae_fixture_dir), "--max-seq-len", "50"],
          "image": str(image), "orbax": str(root / "orbax")}


def _run(capsys, *argv):
  rc = cli.main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.mark.slow
def test_generate_writes_pngs_from_original_and_orbax_checkpoints(assets, capsys):
  out_dir = assets["root"] / "t2i"
  rc, out, _ = _run(capsys, "generate", *assets["model"], "a dog", "a cat", "--steps", "3",
                    "--guidance", "3.0", "--no-progress", "--out", str(out_dir))
  assert rc == 0
  files = sorted(p for p in os.listdir(out_dir) if p.endswith(".png"))
  assert files == ["00000.png", "00001.png"]
  assert np.asarray(Image.open(out_dir / files[0])).shape == (64, 64, 3)
  meta = json.loads((out_dir / "prompts.json").read_text())
  assert [m["prompt"] for m in meta] == ["a dog", "a cat"]
  assert str(out_dir / files[1]) in out
  # The same weights as an Orbax checkpoint give the same image.
  orbax = list(assets["model"])
  orbax[1] = assets["orbax"]
  rc, _, _ = _run(capsys, "generate", *orbax, "a dog", "--steps", "3", "--guidance", "3.0",
                  "--no-progress", "--out", str(out_dir / "orbax"))
  assert rc == 0
  np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "orbax" / files[0])),
                                np.asarray(Image.open(out_dir / files[0])))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork")  # the test's own iio.imread below (ffmpeg subprocess)
def test_generate_image_to_video(assets, capsys):
  out_dir = assets["root"] / "i2v"
  rc, out, _ = _run(capsys, "generate", *assets["model"], "a dog runs", "--num-frames", "5",
                    "--image", assets["image"], "--steps", "3", "--guidance", "3.0",
                    "--no-progress", "--out", str(out_dir))
  assert rc == 0
  written = [p for p in os.listdir(out_dir) if p.startswith("00000.")]
  assert written in (["00000.mp4"], ["00000.gif"])  # GIF when imageio has no video backend
  frames = iio.imread(out_dir / written[0])
  assert frames.shape[0] == 5 and frames.shape[1:3] == (64, 64)


@pytest.mark.slow
def test_understand_answers_each_question(assets, capsys):
  rc, out, _ = _run(capsys, "understand", *assets["model"], "--image", assets["image"],
                    "--question", "What is in the image? *** Is it a dog?",
                    "--max-new-tokens", "4", "--no-progress", "--json",
                    str(assets["root"] / "answers.json"))
  assert rc == 0
  assert out.count("Q: ") == 2
  answers = json.loads((assets["root"] / "answers.json").read_text())
  assert [a["question"] for a in answers] == ["What is in the image?", "Is it a dog?"]


@pytest.mark.slow
def test_understand_several_images_one_question_or_separately(assets, capsys):
  second = assets["root"] / "second.png"
  testing.random_image(np.random.default_rng(1), 64, 80).save(second)
  images = ["--image", assets["image"], "--image", str(second)]
  common = [*assets["model"], "--max-new-tokens", "4", "--no-progress"]
  both = assets["root"] / "both.json"
  rc, out, _ = _run(capsys, "understand", *common, *images, "--question", "Same?",
                    "--json", str(both))
  assert rc == 0 and out.count("Q: ") == 1  # one question about both images
  answer = json.loads(both.read_text())
  assert answer[0]["image"] == [assets["image"], str(second)]
  sep = assets["root"] / "sep.json"
  rc, out, _ = _run(capsys, "understand", *common, *images, "--question", "Same?",
                    "--separate", "--json", str(sep))
  assert rc == 0 and out.count("Q: ") == 2
  batch = assets["root"] / "items.jsonl"
  batch.write_text(json.dumps({"image": [assets["image"], str(second)], "question": "Same?"})
                   + "\n" + json.dumps({"image": str(second), "question": "Same?"}) + "\n")
  via_file = assets["root"] / "file.json"
  rc, _, _ = _run(capsys, "understand", *common, "--batch-file", str(batch), "--json",
                  str(via_file))
  assert rc == 0
  got = json.loads(via_file.read_text())
  # The same items answered through the file: the two-image one as above, the
  # one-image one as --separate's second answer.
  assert got[0]["answer"] == answer[0]["answer"]
  assert got[1]["answer"] == json.loads(sep.read_text())[1]["answer"]


@pytest.mark.slow
def test_edit_and_eval_commands(assets, capsys):
  out_dir = assets["root"] / "edits"
  rc, out, _ = _run(capsys, "edit", *assets["model"], "--image", assets["image"], "make it red",
                    "make it blue", "--steps", "3", "--no-progress", "--out", str(out_dir))
  assert rc == 0
  meta = json.loads((out_dir / "edits.json").read_text())
  assert [m["instruction"] for m in meta] == ["make it red", "make it blue"]
  assert np.asarray(Image.open(out_dir / meta[1]["file"])).shape == (64, 64, 3)
  prompts = assets["root"] / "geneval.jsonl"
  prompts.write_text(json.dumps({"tag": "single_object", "prompt": "a dog"}) + "\n")
  geneval = assets["root"] / "geneval"
  rc, out, _ = _run(capsys, "eval", "geneval", *assets["model"], "--prompts", str(prompts),
                    "--out", str(geneval), "--samples", "2", "--steps", "2", "--no-progress")
  assert rc == 0 and "1 prompts (1 written now" in out
  assert sorted(os.listdir(geneval / "00000" / "samples")) == ["0000.png", "0001.png"]
  rc, _, err = _run(capsys, "eval", "dpg", *assets["model"], "--prompts",
                    str(assets["root"] / "nope"), "--out", str(geneval))
  assert rc == 1 and "--prompts" in err


@pytest.mark.slow
def test_mixed_writes_a_story(assets, capsys):
  out_dir = assets["root"] / "story"
  rc, out, err = _run(capsys, "mixed", *assets["model"], "--rounds", "1", "--max-text-tokens", "3",
                      "--steps", "3", "--out", str(out_dir))
  assert rc == 0
  story = json.loads((out_dir / "story.json").read_text())
  assert len(story["texts"]) == 1 and story["prompt"].startswith("Mixed-modality")
  assert "round 0: text" in err  # the progress bar over tokens


@pytest.mark.parametrize("case", ["missing_checkpoint", "unreadable_image", "long_prompt"])
def test_clear_errors(assets, capsys, case):
  model = list(assets["model"])
  if case == "missing_checkpoint":
    model[1] = str(assets["root"] / "nope")
    argv = ["generate", *model, "x", "--no-progress"]
    expect = "does not exist"
  elif case == "unreadable_image":
    bad = assets["root"] / "bad.png"
    bad.write_bytes(b"not a png")
    argv = ["understand", *model, "--image", str(bad), "--question", "q"]
    expect = "cannot load image"
  else:
    argv = ["generate", *model, "a photo of a dog in the park " * 10, "--no-progress"]
    expect = "longer than the context"
  rc, _, err = _run(capsys, *argv)
  assert rc == 1
  assert expect in err and "Traceback" not in err
