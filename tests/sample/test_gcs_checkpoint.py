"""`convert to-orbax --out gs://...` then `generate --checkpoint gs://...` (GCS emulator):
the checkpoint in the bucket gives the image the original directory gives."""
import json

import numpy as np
from PIL import Image

from showo2_jax import paths
from showo2_jax.cli import main as cli
from showo2_jax.convert import checkpoint_io, showo2_keys
from showo2_jax.data import testing

from tiny_model import random_params, tiny_config


def test_convert_to_gs_and_generate_from_gs(gcs_bucket, tmp_path, wan_vae_fixture_dir, capsys):
  original = tmp_path / "showo2"
  original.mkdir()
  config = tiny_config()
  for name, d in zip(("config.json", "llm_config.json", "siglip_config.json"),
                     config.to_original_json()):
    (original / name).write_text(json.dumps(d))
  checkpoint_io.save_safetensors(showo2_keys.params_to_state_dict(random_params(config)),
                                 str(original / "model.safetensors"))
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
