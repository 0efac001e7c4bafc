"""Tiny random model (fixture-sized) for tests and the embedded default run."""
from configs import common, models


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = models.tiny()
  c.vae = models.wan_vae_tiny()
  c.resolution = 64                 # 64 px -> 8x8 latents -> 4x4 tokens (+1 time slot)
  c.max_seq_len = 64
  c.sample.num_steps = 6
  c.sample.guidance_scale = 5.0
  c.sample.max_new_tokens = 16
  return c
