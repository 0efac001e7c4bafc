"""Show-o2 1.5B-HQ at 1024x1024."""
from configs import common, models


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = models.showo2_1p5b(tokens_per_side=64)
  c.vae = models.wan_vae()
  c.resolution = 1024
  c.max_seq_len = 4352              # 4097-token visual block, max_text_len 251
  return c
