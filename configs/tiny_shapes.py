"""The main job: a tiny Show-o2 learns a shapes world on one CPU (nothing downloaded).

`showo2-jax train --config tiny_shapes --workdir DIR` runs Show-o2's whole recipe,
scaled down, through the real code paths (showo2_jax/shapes/recipe.py):

  world      procedural shapes world written as real files (PNG + JSONL, LLaVA
             JSON, GIF clips) and a BPE tokenizer trained on its sentences
  vae        a Wan2.1-architecture VAE trained on the images (L1 + 4 MSE + 1e-3 KL)
  latents    `precompute-latents` of the generation, captioning and LLaVA data
  stage1     generation + captioning (ntp 1.0, flow 1.0), everything trains
             (no pre-trained LLM or semantic layers exist to freeze)
  stage2     generation + LLaVA questions (ntp 1.0), cosine schedule, the three
             stage-2 groups, CFG caption dropout 0.1 as the original
  report     samples.png, answers.txt, loss.png, metrics.json (eval-shapes)

Semantic-layer distillation is left out: it needs a SigLIP teacher, and here
the semantic layers train from scratch in stage 1 instead.

This file is the model and the stage-2 config; `recipe` holds each phase's
settings (override any with --config.recipe.stage1.num_steps=...).
"""
import ml_collections

from configs import _train_common as tc
from configs import common

RESOLUTION = 32
Z_DIM = 8


def model():
  llm = ml_collections.ConfigDict(dict(
      vocab_size=400, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
      num_kv_heads=2, head_dim=32, rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=True))
  siglip = ml_collections.ConfigDict(dict(
      hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, layer_norm_eps=1e-6,
      position_grid=4))
  flow = ml_collections.ConfigDict(dict(
      hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=16, rms_norm_eps=1e-5, qk_norm_eps=1e-6, final_norm_eps=1e-6, rope_theta=1e4,
      rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)))
  return ml_collections.ConfigDict(dict(
      llm=llm, siglip=siglip, flow_head=flow, latent_channels=Z_DIM, patch_size=2,
      image_latent_height=4, image_latent_width=4,
      add_time_embeds=True, time_embed_dim=64, fusion_norm_eps=1e-6,
      dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=True))


def vae():
  """Wan2.1's architecture at 1/12 width with one spatial downsampling less
  (32 px -> 8x8 latents); latents_mean/std are measured after training."""
  return ml_collections.ConfigDict(dict(
      dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=1, attn_scales=[],
      temperal_downsample=[False, True], latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM))


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = model()
  c.vae = vae()
  c.vae_dtype = "float32"
  c.resolution = RESOLUTION
  c.max_seq_len = 56
  tc.add_training(c, num_steps=600, global_batch_size=16, seed=10086)
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.train.log_every = 50
  c.train.report_every = 1000000      # the progress bar shows speed and ETA
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 1
  c.sample.update(dict(num_steps=25, guidance_scale=3.0, time_shifting_factor=1.0,
                       max_new_tokens=8))
  # XLA's CPU optimisation passes stay on: measured on 2 cores, they cost ~10 s more
  # compilation per program and make the steps 1.4x (VAE) to 1.9x (stages) faster,
  # which over ~2000 steps saves minutes.
  c.xla_cpu_fast_compile = False
  c.recipe = ml_collections.ConfigDict(dict(
      world=dict(num_images=3000, num_clips=32, num_heldout=64, seed=0),
      # kl_weight 1e-3 (was 1e-6): with an almost free KL the encoder put red and yellow
      # (which differ only in green) 2-4x closer in latent space than any other two
      # colours, so the flow loss hardly paid for telling them apart and red prompts gave
      # orange-yellow images (gen_colour 0.62 -> 0.96 measured, docs/shapes.md).
      vae=dict(num_steps=600, batch_size=32, learning_rate=3e-3, kl_weight=1e-3, mse_weight=4.0),
      # Latent jobs (t2i, captions, llava) stored as the posterior mean only
      # (precompute-latents --deterministic) instead of sampled every step as the
      # original (spec 6.6). Measured for ("captions", "llava"): und_shape 0.71 vs 0.75,
      # no gain (docs/shapes.md), so every job keeps the original's sampling.
      latents=dict(posterior_mean=()),
      # Stage 1's captioning loss weighs 1.0 (the original's 0.2 is for a pre-trained LLM;
      # nothing here is pre-trained); stage 2 runs 2000 steps (was 1200) of 4 generation +
      # 12 question rows (was 8 + 8): ~6 shape answers a step, which the LLM needs to read
      # a large circle's missing corners. und_shape 0.75 -> 0.92 on the report's 48 scenes
      # (0.74 -> 0.91 on 384 fresh renders), gen_shape 0.52 -> 0.42, for ~2 more minutes
      # (docs/shapes.md).
      stage1=dict(num_steps=800, t2i_rows=12, mmu_rows=4, learning_rate=1e-3, warmup_steps=50,
                  ntp_coeff=1.0),
      stage2=dict(num_steps=2000, t2i_rows=4, mmu_rows=12, learning_rate=1e-3,
                  ve_learning_rate=5e-4, ntp_coeff=1.0),
      report=dict(num_eval=48, samples_per_prompt=1),
      # Partial re-runs (recipe.py): redo=PHASE forgets that phase and every later one
      # and runs them again; stop_after=PHASE stops once it is done.
      redo="", stop_after="",
  ))
  return c
