"""Semantic-layer distillation on real files: images -> (VAE latents, SigLIP features)
records -> Grain -> the distill task. A tiny student started as the original starts
it (SigLIP's position table and layers, a fresh latent patch embedder) gets closer
to the tiny SigLIP teacher."""
import json

import numpy as np
import pytest

from showo2_jax import config_lib
from showo2_jax.cli import precompute as precompute_cli
from showo2_jax.data import build, precompute, tasks, testing
from showo2_jax.train import trainer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_tiny_student_gets_closer_to_siglip_teacher(tmp_path):
  c = config_lib.load_config("distill_semantic:tiny")
  s = c.model.siglip
  torch.manual_seed(0)
  teacher_dir = tmp_path / "siglip"
  transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
      num_hidden_layers=s.num_layers + 1, num_attention_heads=s.num_heads,
      image_size=s.position_grid * 14, patch_size=14)).save_pretrained(teacher_dir)
  jsonl = testing.write_image_text_dataset(tmp_path / "images", 8, size=(64, 64))

  encode = precompute_cli.with_teacher(
      precompute_cli.wan_encoder(c, None, deterministic=True), str(teacher_dir))
  records = build.load_records("image_text", "files", jsonl)
  result = precompute.precompute_latents(
      precompute.with_pixels(records, tasks.pixel_loader("image_text", c.resolution)), encode,
      str(tmp_path / "shards"), batch_size=4, progress=False)
  assert result.num_records == 8

  c.data.source, c.data.path = "array_record", str(tmp_path / "shards" / "*.array_record")
  c.train.num_steps, c.train.global_batch_size = 40, 4
  c.train.log_every, c.train.tensorboard = 1, False
  c.checkpoint.every_steps = 1000
  c.init.sources = (f"siglip:{teacher_dir}",)     # the original starts und_trans from SigLIP
  c.init.fresh = ("image_embedder_und",)
  summary = trainer.train(c, str(tmp_path / "run"))
  assert summary["status"] == "done"
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if l]
  loss = [r["loss"] for r in rows if "loss" in r]
  assert len(loss) == 40
  first, last = np.mean(loss[:5]), np.mean(loss[-5:])
  assert last < 0.8 * first, loss
