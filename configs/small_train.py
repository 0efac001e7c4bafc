"""The `small` benchmark model (shared/docs/BENCHMARKS.md) in its training setting:
batch 2, sequence 1024, one 432-px image per row, every parameter trainable
(stage 2), AdamW, loss 0.2 * NTP + FM, synthetic data."""
from configs import _train_common as tc
from configs import small


def get_config(arg=None):
  c = small.get_config(arg)
  tc.add_training(c, num_steps=100, global_batch_size=2)
  c.train.frozen = ()
  c.train.ntp_coeff, c.train.flow_coeff = 0.2, 1.0
  c.optim.warmup_steps = 0
  c.data.update(dict(t2i_rows=1, mmu_rows=1, caption_len=32))
  return c
