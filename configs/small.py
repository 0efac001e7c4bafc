"""The `small` benchmark configuration (shared/docs/BENCHMARKS.md), 432 px."""
from configs import common, models


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.model = models.small()
  c.vae = models.wan_vae()
  c.resolution = 432
  c.max_seq_len = 1024
  return c
