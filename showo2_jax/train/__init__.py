"""Training: both Show-o2 stages, mixed modality and semantic distillation on a mesh.

Modules, in the order a run uses them:
  distributed   jax.distributed from flags or the environment
  tasks         model + objective + trainable params of a run
  partition     frozen params and optimizer groups by name
  optimizer     AdamW, schedules, clipping
  state         TrainState, its shardings, creation
  warm_start    params from a previous stage, converted or original weights
  data          per-process batches -> global sharded arrays
  synthetic     in-memory learnable data with the real layout
  vae_encoder   the frozen VAE: pixels -> sampled latents inside the step
  noising       per-image t, noise, clean context, flow masks
  objective     ntp_coeff * NTP + flow_coeff * FM
  step          the jitted, sharded, donated train step
  checkpointing Orbax: state + data iterator, async, keep K
  metrics       TensorBoard / log / metrics.jsonl, throughput, profiling
  trainer       the loop
  aot           ahead-of-time compilation for a target topology
  flops         FLOPs per step (MFU)
"""
