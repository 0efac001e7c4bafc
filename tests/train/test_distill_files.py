"""Semantic-layer distillation on real files: images -> (VAE latents, SigLIP features)
records -> Grain -> the distill task. A tiny student started as the original starts
it (SigLIP's position table and layers, a fresh latent patch embedder) gets closer
to the tiny SigLIP teacher."""
import json

import numpy as np
import pytest

from showo2_jax import config_lib
from showo2_jax.data import build, precompute, tasks, testing
from showo2_jax.train import distill, trainer
from showo2_jax.train import latents as latents_lib

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

  encode = latents_lib.with_teacher(
      latents_lib.wan_encoder(c, None, deterministic=True), str(teacher_dir))
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


def test_loss_is_the_originals_clamped_cosine():
  """`ShowoSemanticLayers.forward` (modeling_semantic_layers.py): F.normalize both,
  cos per token, clamp to [1e-4, 0.9999], mean of -log; rows here include an exact
  copy (clamped at 0.9999) and an opposite (clamped at 1e-4)."""
  rng = np.random.default_rng(0)
  teacher = rng.standard_normal((2, 5, 48)).astype(np.float32)
  student = rng.standard_normal((2, 5, 48)).astype(np.float32)
  student[0, 0], student[0, 1] = teacher[0, 0] * 3.0, -teacher[0, 1]
  t, s = (torch.nn.functional.normalize(torch.from_numpy(x).reshape(-1, 48), dim=-1)
          for x in (teacher, student))
  want = -torch.log(torch.clamp(torch.sum(t * s, dim=-1), 0.0001, 0.9999)).mean()
  got = distill.cosine_distill_loss(student, teacher)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
