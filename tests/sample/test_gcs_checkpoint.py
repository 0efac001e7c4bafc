"""`convert to-orbax --out gs://...` then `generate --checkpoint gs://...` (GCS emulator):
the checkpoint in the bucket gives the image the original directory gives."""
import json

import numpy as np
import pytest
from PIL import Image

from showo2_jax import paths
from showo2_jax.cli import main as cli
from showo2_jax.convert import checkpoint_io
from showo2_jax.data import testing

from tiny_model import random_params, tiny_config, write_original_dir


@pytest.mark.slow
def test_convert_to_gs_and_generate_from_gs(gcs_bucket, tmp_path, wan_vae_fixture_dir, capsys):
  original = tmp_path / "showo2"
  config = tiny_config()
  write_original_dir(original, config, random_params(config))
  tok = testing.build_test_tokenizer(tmp_path / "tokenizer")
  remote = gcs_bucket + "/ckpt/showo2-orbax"

  assert cli.main(["convert", "to-orbax", "--torch", str(original), "--out", remote]) == 0
  assert "wrote showo2 checkpoint" in capsys.readouterr().out
  assert "_CHECKPOINT_METADATA" in paths.listdir(remote)
  assert not (tmp_path / "gs:").exists()

  images = {}
  for name, checkpoint in (("local", str(original)), ("gs", remote)):
    out = tmp_path / name
    rc = cli.main(["generate", "--checkpoint", checkpoint, "--tokenizer", tok, "--vae",
                   str(wan_vae_fixture_dir), "--max-seq-len", "50", "a dog", "--steps", "2",
                   "--guidance", "3.0", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    images[name] = np.asarray(Image.open(out / "00000.png"))
  np.testing.assert_array_equal(images["gs"], images["local"])


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_every_input_and_output_in_the_bucket(gcs_bucket, tmp_path, wan_vae_fixture_dir, capsys):
  """The original directory, the tokenizer and every output live in the bucket:
  to-orbax from gs://, generate with a gs:// tokenizer into a gs:// --out, to-torch
  into gs:// (the weights equal the source's), and nothing appears on local disk
  under a folder named `gs:`."""
  original = tmp_path / "showo2"
  config = tiny_config()
  sd = write_original_dir(original, config, random_params(config))
  tok = testing.build_test_tokenizer(tmp_path / "tokenizer")
  paths.copy_from_local(original, gcs_bucket + "/in/showo2")
  paths.copy_from_local(tok, gcs_bucket + "/in/tokenizer")
  orbax_dir, out, torch_dir = (gcs_bucket + s for s in ("/ckpt/orbax", "/out/t2i", "/ckpt/torch"))

  assert cli.main(["convert", "to-orbax", "--torch", gcs_bucket + "/in/showo2", "--out", orbax_dir]) == 0
  rc = cli.main(["generate", "--checkpoint", orbax_dir, "--tokenizer", gcs_bucket + "/in/tokenizer",
                 "--vae", str(wan_vae_fixture_dir), "--max-seq-len", "50", "a dog", "--steps", "2",
                 "--no-progress", "--out", out])
  assert rc == 0, capsys.readouterr().err
  assert paths.listdir(out) == ["00000.png", "prompts.json"]
  assert json.loads(paths.read_text(paths.join(out, "prompts.json"))) == [
      {"file": "00000.png", "prompt": "a dog"}]
  with paths.open(paths.join(out, "00000.png"), "rb") as f:
    image = Image.open(f)
    assert image.format == "PNG" and image.size[0] > 0

  assert cli.main(["convert", "to-torch", "--orbax", orbax_dir, "--out", torch_dir,
                   "--format", "safetensors"]) == 0
  written = paths.listdir(torch_dir)
  assert "config.json" in written and any(f.endswith(".safetensors") for f in written), written
  with paths.local_copy(torch_dir) as local, checkpoint_io.StateDict(local) as back:
    assert sorted(back.keys()) == sorted(sd)
    k = sorted(sd)[0]
    np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(sd[k]))
  assert not (tmp_path / "gs:").exists() and not paths.exists("gs:")
