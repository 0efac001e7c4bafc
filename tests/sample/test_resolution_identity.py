"""The default generation resolution comes from the checkpoint's identity: the
released show-o2-1.5B-HQ says 27 patches per side in its config.json (as the base
model) but generates at 512 px."""
import shutil

from showo2_jax.convert import pipeline as convert
from showo2_jax.convert import loading
from showo2_jax.sample.pipeline import Pipeline

from test_cli import assets  # noqa: F401  (module fixture: tiny checkpoint, tokenizer, VAE)


def test_hq_checkpoint_generates_at_512_unless_told_otherwise(assets, tmp_path):
  ckpt, tok = assets["model"][1], assets["model"][3]
  plain_config, _ = loading.load_showo2(ckpt)
  plain, why = loading.default_resolution(ckpt, plain_config)
  assert plain == plain_config.image_latent_height * plain_config.patch_size * 8
  assert "image_latent_height" in why
  # The same files in the Hugging Face cache layout of the HQ repository.
  hq = tmp_path / "models--showlab--show-o2-1.5B-HQ" / "snapshots" / "0123abcd"
  shutil.copytree(ckpt, hq)
  assert loading.checkpoint_identity(str(hq)) == "show-o2-1.5b-hq"
  pipe = Pipeline.load(str(hq), tok)
  assert pipe.resolution == 512 and pipe.max_seq_len == 1280
  assert pipe.understanding_resolution == plain_config.siglip.position_grid * 16  # unchanged
  assert Pipeline.load(str(hq), tok, resolution=432).resolution == 432  # the flag wins
  # An Orbax conversion of it keeps the identity (the source path is recorded).
  convert.to_orbax(str(hq), str(tmp_path / "hq_orbax"))
  assert loading.checkpoint_identity(str(tmp_path / "hq_orbax")) == "show-o2-1.5b-hq"
  assert loading.checkpoint_identity(ckpt) is None
