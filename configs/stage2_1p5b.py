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
num_steps is one epoch, len(dataset) // (rows_mmu * GPUs) (2a: 2906, 2c: 16666; 7B with
2 mmu rows: 5812, 33333); 2b: 5000. Set it for your data.

Data (`--data FILE`; examples configs/data/stage2a.yaml, stage2b.yaml, stage2c.yaml): `t2i` (image-text
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
# Samples in the understanding data of 2a (blip_laion_cc_sbu_558k) and 2c (LLaVA-OV SI);
# 2b's mix has no fixed size here: 5000 steps (set yours).
MMU_SAMPLES = dict(a=558_000, c=3_200_000)
STEPS_2B = 5_000


def get_config(arg=None, model=None, rows=(ROWS_T2I, ROWS_MMU)):
  sub = arg or "a"
  if sub not in ("a", "b", "c"):
    raise ValueError(f"stage 2: sub-stage must be a, b or c, got {sub!r}")
  c = common.base_config()
  # Remat: the least recompute that fits 85% of a v5p chip at 8 rows/chip (stage2_1p5b:b on
  # v5p-128, AOT: XLA peak 24.3 of 95 GiB, jaxpr matmuls 1.05x the model formula against 1.27x
  # with `full`; docs/training.md). v6e-256 (32 GiB): XLA peak 23.85 GiB on the data=2 x fsdp=128
  # mesh sharding.fit_mesh_config picks there. v5e (16 GiB): pass --config.model.remat_policy=full
  # (4.8 GiB; `save_attn` also fits, 7.1 GiB with 10.0 GiB of temporaries, and saves only 1.7% of
  # full's recompute).
  c.model = model or tc.bf16_training(models.showo2_1p5b(tokens_per_side=27),
                                      remat_policy="dots_with_no_batch_dims")
  c.vae = models.wan_vae()
  c.resolution, c.max_seq_len = 432, 1024
  steps = MMU_SAMPLES[sub] // (rows[1] * GPUS) if sub in MMU_SAMPLES else STEPS_2B
  tc.add_training(c, num_steps=steps, global_batch_size=sum(rows) * GPUS,
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
