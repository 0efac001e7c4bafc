"""The embedded default run: the tiny model on in-memory synthetic data.

`showo2-jax train --config tiny_train --workdir /tmp/showo2_tiny` needs no
download and finishes in a minute or two on a laptop CPU with both losses
falling. It follows stage 1's recipe (ntp 0.2, flow 1.0, constant lr with
warm-up, logit-normal t with the resolution shift) but trains every parameter,
since a frozen random LLM could not learn the captions.

`tiny_train:pixels` feeds 64x64 pixel images instead of latents and encodes them
in the step with a randomly initialised tiny Wan VAE (the pixel path, without a
download).
"""
from configs import _train_common as tc
from configs import tiny


def get_config(arg=None):
  if arg not in (None, "", "pixels"):
    raise ValueError(f"tiny_train:{arg}: the only variant is 'pixels'")
  c = tiny.get_config(None)
  tc.add_training(c, num_steps=300, global_batch_size=8, seed=10086)
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.train.frozen = ()
  c.train.log_every = 10
  c.train.report_every = 100
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 20
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 2
  c.data.update(dict(t2i_rows=6, mmu_rows=2, num_classes=4, caption_len=6))
  if arg == "pixels":
    c.data.pixels = True
    c.vae_checkpoint = "random"
  return c
