"""Mixed-modality fine-tuning of Show-o2 1.5B on VIST-style stories (spec 4.6, 7.4).

`--config mixed_modality_1p5b` (phase 1: stage-1 freezing, LLM frozen) or
`mixed_modality_1p5b:full` (phase 2: everything trains, ~50k more steps). From
showlab/show-o2-1.5B (`init.from_original` or `init.from_orbax`), constant lr
1e-4, no warm-up, ntp 0.2 / flow 1.0, 40k steps, sequences of 4352 tokens with
up to 4 images of 730 tokens. Per row, with probability 0.7 the first
idx ~ U{1..last} images are clean context (t = 1, out of the flow loss).
Batch 2 rows per GPU; 8 GPUs assumed -> global 16.

Data (`--data FILE`; example configs/data/mixed_modality.yaml): one `vist`
stream (VIST-style json: images + captions per story, max_num_images 4).
Also set `tokenizer_path`.
"""
from configs import _train_common as tc
from configs import common, models

GPUS = 8


def get_config(arg=None):
  phase = arg or "frozen"
  if phase not in ("frozen", "full"):
    raise ValueError(f"mixed_modality_1p5b: phase must be frozen or full, got {phase!r}")
  c = common.base_config()
  # Remat: the least recompute that fits 85% of a v5p chip at the paper's 2 rows x 4352 tokens
  # per chip (AOT, docs/training.md): dots_with_no_batch_dims, XLA peak 26.6 of 95 GiB on
  # v5p-128 (`full` 11.4). v6e (32 GiB): with `dense` pass --config.model.remat_policy=full
  # (21.2 GiB; dots needs 35.4 GiB of temporaries), or keep dots with
  # --config.model.attention_impl=splash (17.9 GiB). v5e (16 GiB): remat_policy=full (11.1).
  c.model = tc.bf16_training(models.showo2_1p5b(tokens_per_side=27), remat_policy="dots_with_no_batch_dims")
  c.vae = models.wan_vae()
  c.resolution, c.max_seq_len = 432, 4352
  tc.add_training(c, num_steps=40_000 if phase == "frozen" else 50_000, global_batch_size=2 * GPUS,
                  seed=10000)
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  c.train.ntp_coeff, c.train.flow_coeff = 0.2, 1.0
  c.train.clean_context_prob = 0.7
  c.train.frozen = tc.STAGE1_FROZEN if phase == "frozen" else ()
  c.optim.schedule = "constant"
  c.optim.learning_rate = 1e-4
  c.checkpoint.every_steps, c.checkpoint.keep = 2000, 3
  c.init.from_original = "/path/to/show-o2-1.5B"
  if phase == "full":
    c.init.from_original = ""
    c.init.from_checkpoint = "/path/to/mixed_modality_phase1/workdir"
  c.tokenizer_path = ""
  c.data.update(dict(t2i_rows=0, mmu_rows=0, interleaved_rows=1, max_images=4))
  return c
