"""Show-o2 7B stage 2 (spec 7.3): as stage2_1p5b with 2 t2i + 2 understanding
rows per GPU (48 GPUs -> global 192)."""
from configs import _train_common as tc
from configs import models, stage2_1p5b


def get_config(arg=None):
  model = tc.bf16_training(models.showo2_7b(tokens_per_side=27), remat_policy="full")
  return stage2_1p5b.get_config(arg, model=model, rows=(2, 2))
