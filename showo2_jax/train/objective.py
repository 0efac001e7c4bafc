"""The Show-o2 training objective: ntp_coeff * NTP + flow_coeff * FM (spec 2.4, 7.1).

`Showo2Objective(model, config)(params, batch, rng) -> (loss, metrics)` is pure:
it noises the batch's clean latents (noising.py), runs the model once, and takes
the model's own loss functions. Only trainable leaves are differentiated; the
step passes the frozen ones in through `params` all the same.
"""
from __future__ import annotations

import jax.numpy as jnp

from showo2_jax.models import showo2
from showo2_jax.flow import transport
from showo2_jax.train import noising


def shift_mu(config):
  """mu(S) of the resolution shift, S = num_t2i_image_tokens (time token included)."""
  if not config.train.do_shift:
    return None
  s = config.train.num_t2i_image_tokens
  if s is None or s < 0:
    s = config.model.image_latent_height * config.model.image_latent_width + 1
  return float(transport.resolution_shift_mu(s))


class Showo2Objective:
  """Callable loss of one (micro)batch; hashable settings only, so jit can close over it."""

  def __init__(self, model: showo2.Showo2, config):
    t = config.train
    self.model = model
    self.ntp_coeff, self.flow_coeff = float(t.ntp_coeff), float(t.flow_coeff)
    self.und_max_t0 = float(t.und_max_t0)
    self.shift_mu = shift_mu(config)
    self.clean_context_prob = float(t.clean_context_prob)
    self.bf16_timesteps = bool(t.bf16_timesteps)
    self.compute_dtype = showo2.to_dtype(model.config.dtype)

  def __call__(self, params, batch, rng):
    mp = batch["modality_positions"].astype(jnp.int32)
    is_und = batch.get("is_und")
    if is_und is None:
      is_und = jnp.zeros(mp.shape[:1], jnp.int32)
    flow = noising.noise_batch(
        rng, batch["latents"], mp, batch["image_masks"], is_und, und_max_t0=self.und_max_t0,
        shift_mu=self.shift_mu, clean_context_prob=self.clean_context_prob)
    t_model = transport.bf16_round(flow.t) if self.bf16_timesteps else flow.t
    variables = {"params": params}
    out = self.model.apply(variables, batch["text_tokens"], flow.x_t, t_model, mp, compute_logits=False)
    # The lm_head runs only where a label exists (the same value as ntp_loss on full logits).
    ntp = showo2.ntp_loss_from_hidden(
        lambda h: self.model.apply(variables, h, method=showo2.Showo2.logits), out["hidden"],
        batch["text_labels"])
    # The original places the targets in a model-dtype tensor before the MSE.
    labels = flow.u_t.astype(self.compute_dtype)
    fm = showo2.flow_loss(out["v_tok"], labels, flow.image_masks, mp)
    loss = self.ntp_coeff * ntp + self.flow_coeff * fm
    return loss, {"loss": loss, "ntp_loss": ntp, "flow_loss": fm}

