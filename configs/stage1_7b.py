"""Show-o2 7B stage 1 (spec 7.2; showo2_7b_stage_1_{a,b}.yaml).

As stage1_1p5b, on 128 GPUs (global batch 1024). 1a starts from the 1.5B
stage-1 checkpoint for everything whose shape does not depend on the LLM width
(flow head, time embedder, semantic layers) and initialises the rest fresh:
the 7B LLM comes from Qwen2.5-7B-Instruct (`init` of the run that merges it),
image_embedder_gen and fusion_proj follow the 3584-wide LLM, and diff_proj /
time_embed_proj are the MLP adapters between the 3584-wide LLM and the
2048-wide flow head (warm_start.TRANSFER_1P5B_TO_7B_EXCLUDE).
"""
from configs import _train_common as tc
from configs import models, stage1_1p5b

GPUS = 128


def get_config(arg=None):
  c = stage1_1p5b.get_config(arg)
  c.model = tc.bf16_training(models.showo2_7b(tokens_per_side=27))
  c.train.global_batch_size = 8 * GPUS
  if (arg or "a") == "a":
    c.init.from_checkpoint = "/path/to/stage1_1p5b/workdir"
    c.init.exclude = ("image_embedder_gen", "showo", "fusion_proj", "diff_proj", "time_embed_proj")
  return c
