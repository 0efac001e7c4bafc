"""Show-o2 1.5B-HQ at 512x512 (showlab/show-o2-1.5B-HQ)."""
from configs import common, models


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = models.showo2_1p5b(tokens_per_side=32)
  c.vae = models.wan_vae()
  c.resolution = 512
  c.max_seq_len = 1280              # 1025-token visual block, max_text_len 251
  return c
