"""Show-o2 1.5B stage 1 (spec 7.2; showo2_1.5b_stage_1_{a,b}.yaml).

`--config stage1_1p5b` (1a) or `--config stage1_1p5b:b` (1b). Trains the
generation side (image_embedder_gen, fusion_proj, time_embed, time_embed_proj,
diff_proj, flow head) with the LLM and the semantic layers frozen.

1a: 150k steps, constant lr 1e-4 with 2000 warm-up steps, 66M t2i + 66M
captioning pairs at 432 px. 1b: 40k more steps on high-quality t2i data, no
warm-up, starting from 1a's final checkpoint. Per GPU 6 t2i + 2 captioning rows;
64 GPUs -> global batch 512.

Starting point (spec 7.2, `init.sources`, train/warm_start.py): 1a = the LLM
from Qwen2.5-1.5B-Instruct (an HF directory), the semantic layers from the
released `pre-distilled_semantic_layers.pt` (or a `distill_semantic` run), the
generation side fresh (`init.fresh`); 1b = 1a's final checkpoint. Replace the
placeholder paths, e.g.

  --config.init.sources='("qwen2:/m/Qwen2.5-1.5B-Instruct", "semantic:/m/pre-distilled_semantic_layers.pt")'

Data (`--data FILE`; examples configs/data/stage1.yaml (1a), stage1b.yaml): two streams of
image-text JSONL ({"path", "prompt"} lines), in this order: `t2i` (task t2i,
min_res 256, cond_dropout 0.1; 1b: the high-quality set) and `mmu` (task
captioning), 6 + 2 rows per device. Also set `tokenizer_path`.
"""
from configs import _train_common as tc
from configs import common, models

GPUS = 64


def get_config(arg=None):
  sub = arg or "a"
  if sub not in ("a", "b"):
    raise ValueError(f"stage1_1p5b: sub-stage must be a or b, got {sub!r}")
  c = common.base_config()
  # Remat: the least recompute that fits 85% of a v5p chip at the paper's 8 rows/chip
  # (stage1_1p5b on v5p-128, AOT: XLA peak 18.6 of 95 GiB against 4.8 with `full`;
  # docs/training.md; v6e-256 18.3 of 32). v5e (16 GiB): pass --config.model.remat_policy=full (4.2).
  c.model = tc.bf16_training(models.showo2_1p5b(tokens_per_side=27),
                             remat_policy="dots_with_no_batch_dims")
  c.vae = models.wan_vae()
  c.resolution, c.max_seq_len = 432, 1024
  seed = 10086 if sub == "a" else 10000
  tc.add_training(c, num_steps=150_000 if sub == "a" else 40_000, global_batch_size=8 * GPUS, seed=seed)
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  c.train.ntp_coeff, c.train.flow_coeff = 0.2, 1.0
  c.train.frozen = tc.STAGE1_FROZEN
  c.train.log_every, c.train.report_every = 50, 100
  c.optim.schedule = "constant_with_warmup"
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 2000 if sub == "a" else 0
  c.checkpoint.every_steps, c.checkpoint.keep = 5000, 3
  c.tokenizer_path = ""
  if sub == "a":
    c.init.sources = ("qwen2:/path/to/Qwen2.5-1.5B-Instruct",
                      "semantic:/path/to/pre-distilled_semantic_layers.pt")
    c.init.fresh = tc.STAGE1_FRESH
  else:
    c.init.sources = ("checkpoint:/path/to/stage1a/workdir",)
  # The t2i / captioning mix of the original (6 + 2 rows of every 8).
  c.data.update(dict(t2i_rows=6, mmu_rows=2))
  return c
