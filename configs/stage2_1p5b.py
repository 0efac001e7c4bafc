"""Show-o2 1.5B stage 2 (spec 7.3; showo2_1.5b_stage_2_{a,b,c}.yaml).

`--config stage2_1p5b:a|b|c`. Starts from the final stage-1 checkpoint
(`init.sources = ("checkpoint:<run>",)`, params only). ntp 1.0, flow 1.0; one epoch of the
understanding data with a cosine schedule (warm-up 3% of the steps, decay to
0); three AdamW groups (semantic layers+embedders / fusion_proj / LLM+flow
head). `time_embed` is in no group and so never updated, as in the original
(spec 10.6). Per GPU 4 t2i + 4 understanding rows; 48 GPUs -> global 384.

| sub | data                          | trains                | lr ve / proj / showo |
| a   | blip_laion_cc_sbu_558k        | fusion_proj only      | 5e-5 / 5e-5 / 5e-5   |
| b   | LLaVA-OV 1.5 + DenseFusion    | everything (but t.e.) | 2e-6 / 1e-5 / 1e-5   |
| c   | LLaVA-OV SI 3.2M (tuning)     | everything (but t.e.) | 2e-6 / 1e-5 / 1e-5   |
num_steps is len(dataset) // (rows_mmu * GPUs): set it for your data.

Data (`--data FILE`; example configs/data/stage2.yaml): `t2i` (image-text
JSONL, min_res 512) then `mmu` (task llava: LLaVA json + image folder, `stage`
pre-training | pre-training-1-5 | tuning for 2a | 2b | 2c), 4 + 4 rows per
device (7B: 2 + 2). Also set `tokenizer_path`.
"""
from configs import _train_common as tc
from configs import common, models

GPUS = 48
ROWS_T2I, ROWS_MMU = 4, 4
STAGE_2A_FROZEN = ("showo", "image_embedder_und", "und_trans", "position_embedding",
                   "image_embedder_gen", "diffusion", "diff_proj", "time_embed_proj")
STEPS = dict(a=558_000 // (ROWS_MMU * GPUS), b=5_000, c=3_200_000 // (ROWS_MMU * GPUS))


def get_config(arg=None, model=None, rows=(ROWS_T2I, ROWS_MMU)):
  sub = arg or "a"
  if sub not in ("a", "b", "c"):
    raise ValueError(f"stage 2: sub-stage must be a, b or c, got {sub!r}")
  c = common.base_config()
  c.model = model or tc.bf16_training(models.showo2_1p5b(tokens_per_side=27))
  c.vae = models.wan_vae()
  c.resolution, c.max_seq_len = 432, 1024
  tc.add_training(c, num_steps=STEPS[sub], global_batch_size=sum(rows) * GPUS,
                  seed=dict(a=10086, b=10086, c=1008)[sub])
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  c.train.ntp_coeff, c.train.flow_coeff = 1.0, 1.0
  c.train.frozen = STAGE_2A_FROZEN if sub == "a" else ()
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.03
  lrs = (5e-5, 5e-5, 5e-5) if sub == "a" else (2e-6, 1e-5, 1e-5)
  for (name, patterns), lr in zip(tc.STAGE2_GROUP_PATTERNS.items(), lrs):
    c.optim.groups[name] = tc.group(patterns, lr)
  c.checkpoint.every_steps, c.checkpoint.keep = 1000, 3
  c.init.sources = ("checkpoint:/path/to/previous/stage/workdir",)
  c.tokenizer_path = ""
  c.data.update(dict(t2i_rows=rows[0], mmu_rows=rows[1]))
  return c
