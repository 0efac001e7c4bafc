"""Training fields shared by every training config (stages, mixed modality, distillation).

A training config is `common.base_config()` plus the blocks below. Values here are
the original's defaults (spec section 7.1); each stage file overrides what differs.
The leading underscore keeps this helper out of `config_lib.available_configs()`.
"""
import ml_collections

# Frozen in stage 1 (and in the first mixed-modality phase): substrings of parameter
# paths, matched as the original's `_freeze_params` matches state_dict names.
STAGE1_FROZEN = ("image_embedder_und", "und_trans", "showo", "position_embedding")

# Trained from scratch in stage 1 (spec 7.2): the generation side. `init.fresh` of the
# stage-1 configs: every other param must come from a source.
STAGE1_FRESH = ("image_embedder_gen", "fusion_proj", "time_embed", "diff_proj", "diffusion_head")

# The 1.5B -> 7B transfer (spec 7.2): what stage1_7b:a does not take from the final 1.5B run (after 2c)
# (the 7B LLM comes from Qwen2.5-7B-Instruct; the other four follow the LLM width).
TRANSFER_1P5B_TO_7B_EXCLUDE = ("showo", "image_embedder_gen", "fusion_proj", "diff_proj",
                               "time_embed_proj")

# Stage-2 parameter groups (spec 7.3). `time_embed` matches none of them, so the
# original never updates it in stage 2 (spec 10.6); add it to a group to fix that.
STAGE2_GROUP_PATTERNS = dict(
    ve=("und_trans", "image_embedder", "position_embedding"),
    proj=("fusion_proj",),
    showo=("showo", "diffusion", "diff_proj", "time_embed_proj"))


def add_training(c, *, num_steps, global_batch_size, seed=10086):
  """Adds the train/optim/checkpoint/init/data blocks to a model config `c`."""
  c.seed = seed
  # The Qwen2.5-Instruct tokenizer directory; read only by file data (`--data`, `data.streams`).
  c.tokenizer_path = ""
  # The frozen VAE that encodes `pixel_values` inside the step (spec 7.1 step 1). Only
  # read when batches carry pixels and no latents; precomputed latents are faster.
  # Wan2.1_VAE.pth, a .safetensors, a directory holding one, an Orbax wan_vae dir
  # (showo2-jax convert), or "random" (fresh weights from `seed`: tests, demos).
  # Its architecture is `c.vae`.
  c.vae_checkpoint = ""
  c.vae_dtype = "bfloat16"                 # VAE compute dtype: the original's bf16 autocast
  c.train = ml_collections.ConfigDict(dict(
      num_steps=num_steps,
      global_batch_size=global_batch_size,   # rows per optimizer step, all hosts
      grad_accum_steps=1,                    # microbatches per step (scanned)
      ntp_coeff=0.2,
      flow_coeff=1.0,
      und_max_t0=1.0,                        # lower bound of t for understanding images
      do_shift=True,                         # logit-normal t shifted by mu(num_t2i_tokens)
      num_t2i_image_tokens=-1,               # S of the shift; -1: N+1 from the resolution
      bf16_timesteps=True,                   # the model sees t rounded to bf16 (spec 10.9)
      clean_context_prob=0.0,                # mixed modality: 0.7 (spec 4.6)
      frozen=STAGE1_FROZEN,                  # substrings; () trains everything
      log_every=50,                          # scalars to TensorBoard, the log and metrics.jsonl
      tensorboard=True,                      # False: log + metrics.jsonl only (no tensorflow import)
      report_every=100,                      # steps/s, tokens/s, ETA
      profile_steps=0,                       # >0: trace this many steps after `profile_start`
      profile_start=10,
      check_finite_every=1,                  # NaN/Inf check lag-free at this period and at saves
  ))
  c.optim = ml_collections.ConfigDict(dict(
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      clip_grad_norm=1.0,
      schedule="constant_with_warmup",       # constant_with_warmup | cosine | constant
      warmup_steps=0,
      warmup_ratio=0.0,                      # cosine: warm-up = int(ratio * num_steps) when > 0
      learning_rate=1e-4,                    # the single group's lr when `groups` is empty
      # name -> ConfigDict(patterns=(...), lr=...); a trainable param must match one group.
      groups=ml_collections.ConfigDict(),
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True))
  c.init = ml_collections.ConfigDict(dict(
      # Ordered starting points, later overriding earlier (train/warm_start.py):
      # "KIND:PATH" or "KIND:PATH#pattern|-pattern" with KIND one of qwen2, siglip,
      # semantic, original, orbax, checkpoint. Empty: random init.
      sources=(),
      fresh=(),                              # substrings of params no source gives (trained from scratch)
      # Single-source shorthands (used only when `sources` is empty; first non-empty wins):
      from_checkpoint="",                    # a previous run's workdir or step dir (params only)
      from_orbax="",                         # converted params (showo2_jax.convert.orbax_io)
      from_original="",                      # an original PyTorch model directory
      exclude=(),                            # substrings of params to keep at their fresh init
      semantic_layers_from="",               # pre-distilled file or distill_semantic run, on top
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",
      # Synthetic, in memory: rows are a repeating pattern of t2i, mmu, interleaved
      # then filled rows (train/synthetic.py).
      t2i_rows=6, mmu_rows=2, interleaved_rows=0, filled_rows=0,
      num_classes=8, max_images=1,
      caption_len=6,
      pixels=False,                          # True: pixel_values (needs vae_checkpoint), not latents
  ))
  return c


def num_image_tokens(c):
  """N + 1: patches plus the time slot, from the model's token grid."""
  return c.model.image_latent_height * c.model.image_latent_width + 1


def group(patterns, lr):
  return ml_collections.ConfigDict(dict(patterns=tuple(patterns), lr=lr))


# Remat for the pod stage configs (names: showo2_jax/models/layers.remat_policy).
# Each stage config states its own choice: the policy with the least recompute that
# was compiled to fit 85% of a v5p chip's HBM at the paper's rows per chip (AOT
# compiles, benchmarks/pod_compile.py, the summary table in docs/training.md), and
# what to pass on the smaller chips. stage1_1p5b, stage2_1p5b, stage2_7b and
# mixed_modality_1p5b all default to `dots_with_no_batch_dims` (XLA peak 15.7-26.6
# of 95 GiB on v5p); v5e's 16 GiB needs `full` (4.2-11.1 GiB); v6e's 32 GiB takes
# dots except mixed_modality_1p5b with `dense` attention. POD_REMAT_POLICY is the
# fallback of configs that were not compiled for a pod (it fits every target).
POD_REMAT_POLICY = "full"


def bf16_training(model, remat_policy=POD_REMAT_POLICY, scan_layers=True):
  """bf16 compute with fp32 master params; layers scanned and rematerialised
  with `remat_policy` (POD_REMAT_POLICY above: how each stage config chose its own)."""
  model.dtype = "bfloat16"
  model.param_dtype = "float32"
  model.remat_policy = remat_policy
  model.scan_layers = scan_layers
  return model
