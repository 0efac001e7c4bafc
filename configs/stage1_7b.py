"""Show-o2 7B stage 1 (spec 7.2; showo2_7b_stage_1_{a,b}.yaml).

As stage1_1p5b, on 128 GPUs (global batch 1024). 1a (`init.sources`): the
7B LLM from Qwen2.5-7B-Instruct (an HF directory), then the final 1.5B model
for everything whose shape does not depend on the LLM width (flow head, time
embedder, semantic layers). The original's train_showo2_7b_stage1.sh copies
`showo2-1.5b-stage-2-c/checkpoint-final`: the 1.5B run after stage 2c (our
`checkpoint:<stage2_1p5b:c workdir>`, or the released model as
`original:<show-o2-1.5B dir>` with the same patterns). image_embedder_gen and fusion_proj follow the
3584-wide LLM and diff_proj / time_embed_proj are the MLP adapters between the
3584-wide LLM and the 2048-wide flow head: those four start fresh
(`_train_common.TRANSFER_1P5B_TO_7B_EXCLUDE`, spec 7.2). 1b: 1a's final checkpoint.
"""
from configs import _train_common as tc
from configs import models, stage1_1p5b

GPUS = 128


def get_config(arg=None):
  c = stage1_1p5b.get_config(arg)
  c.model = tc.bf16_training(models.showo2_7b(tokens_per_side=27), remat_policy="full")
  c.train.global_batch_size = 8 * GPUS
  if (arg or "a") == "a":
    excluded = tc.TRANSFER_1P5B_TO_7B_EXCLUDE
    c.init.sources = ("qwen2:/path/to/Qwen2.5-7B-Instruct",
                      "checkpoint:/path/to/stage2_1p5b_c/workdir#" + "|".join("-" + e for e in excluded))
    c.init.fresh = tuple(e for e in excluded if e != "showo")
  return c
