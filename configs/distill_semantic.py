"""Semantic-layer distillation (spec 1.3; the `pre-distilled_semantic_layers.pt` recipe).

`--config distill_semantic` trains image_embedder_und + position_embedding + the
26 SigLIP-so400m layers on 432-px latents to match SigLIP features (cosine
loss on clean and noised latents). `--config distill_semantic:tiny` is the
fixture-sized version on synthetic data (tests, demos). Stage 1 then reads the
result with `init.sources = ("semantic:<this run>", ...)`. Real data: see
docs/training.md (precompute-latents --teacher, then data.source=array_record).

The original's distillation hyper-parameters are not released; the values below
(AdamW 1e-4, 2000 warm-up steps) are ours.
"""
from configs import _train_common as tc
from configs import common, models, tiny


def get_config(arg=None):
  size = arg or "so400m"
  if size == "tiny":
    c = tiny.get_config()
    tc.add_training(c, num_steps=200, global_batch_size=8)
    c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 10
    c.train.log_every, c.checkpoint.every_steps = 10, 100
  elif size == "so400m":
    c = common.base_config()
    c.model = tc.bf16_training(models.showo2_1p5b(tokens_per_side=27), remat_policy="full")
    c.vae = models.wan_vae()
    c.resolution = 432
    tc.add_training(c, num_steps=100_000, global_batch_size=256)
    c.optim.warmup_steps = 2000
  else:
    raise ValueError(f"distill_semantic: size must be so400m or tiny, got {size!r}")
  c.train.task = "distill_semantic"
  c.train.frozen = ()
  c.data.update(dict(t2i_rows=1, mmu_rows=0, max_images=1))
  # Real data: source="array_record" and `path` = the glob of the shards written by
  # `showo2-jax precompute-latents --teacher <SigLIP dir>` (latents + SigLIP features).
  c.data.path = ""
  return c
