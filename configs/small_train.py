"""The `small` benchmark model (shared/docs/BENCHMARKS.md) in its training setting:
batch 2, sequence 1024, one 432-px image per row, every parameter trainable
(stage 2), AdamW, loss 0.2 * NTP + FM, synthetic data.

The batch is the original's in `shared/bench/ref_bench.py` (what
benchmarks/compare_original.py times it against): two `filled` rows, each
text around one image (34 tokens, the 730-token image block, 260 tokens), every
text position labelled (~293 NTP targets per row) and both images under the FM loss."""
from configs import _train_common as tc
from configs import small


def get_config(arg=None):
  c = small.get_config(arg)
  tc.add_training(c, num_steps=100, global_batch_size=2)
  c.train.frozen = ()
  c.train.ntp_coeff, c.train.flow_coeff = 0.2, 1.0
  c.optim.warmup_steps = 0
  c.data.update(dict(t2i_rows=0, mmu_rows=0, filled_rows=2, caption_len=32))
  return c
