"""Show-o2 1.5B at 432x432 (showlab/show-o2-1.5B)."""
from configs import common, models


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = models.showo2_1p5b(tokens_per_side=27)
  c.vae = models.wan_vae()
  c.resolution = 432
  c.max_seq_len = 1024              # 730-token visual block, max_text_len 290
  return c
