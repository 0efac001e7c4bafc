"""Show-o2 7B stage 2 (spec 7.3): as stage2_1p5b with 2 t2i + 2 understanding
rows per GPU (48 GPUs -> global 192)."""
from configs import _train_common as tc
from configs import models, stage2_1p5b


def get_config(arg=None):
  # Remat: the least recompute that fits 85% of HBM at the paper's 4 rows/chip (AOT, docs/training.md):
  # dots_with_no_batch_dims: XLA peak 19.40 of 95 GiB on v5p-256, 19.13 of 32 on v6e-256, matmuls
  # 1.01x the model formula (1.23x with `full`). v5e (16 GiB): pass --config.model.remat_policy=full
  # (4.58 GiB on v5e-256).
  model = tc.bf16_training(models.showo2_7b(tokens_per_side=27), remat_policy="dots_with_no_batch_dims")
  return stage2_1p5b.get_config(arg, model=model, rows=(2, 2))
