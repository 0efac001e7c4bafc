"""Parity of our Show-o2 forward pass with golden outputs of the original.

Reads any directory in the format of `shared/fixtures/showo2` (config.json,
llm_config.json, siglip_config.json, model.safetensors, cases.npz): other widths
and depths, non-square grids, interpolated position tables, untied embeddings,
video with several latent frames. Each case present in `cases.npz` is run.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.convert.showo2_torch import load_original
from showo2_jax.models import showo2 as s2
from showo2_jax.parity.metrics import relative_error

OUTPUT_THRESHOLD = 1e-4
LOSS_THRESHOLD = 1e-5



def run_showo2_parity(fixture_dir: str) -> list[tuple[str, float, float]]:
  """Returns [(output name, relative error, threshold)] for every case present."""
  path = os.path.join(fixture_dir, "cases.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{fixture_dir}: no cases.npz")
  cases = np.load(path)
  config, params = load_original(fixture_dir)
  model = s2.Showo2(config)
  params = jax.tree.map(jnp.asarray, params)
  forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  results = []

  def image_case(prefix):
    tokens = jnp.asarray(cases[f"{prefix}text_tokens"])
    latents = jnp.asarray(cases[f"{prefix}image_latents" if not prefix else f"{prefix}latents"])
    t = jnp.asarray(cases[f"{prefix}t"])
    mp = jnp.asarray(cases[f"{prefix}modality_positions"])
    out = forward(params, tokens, latents, t, mp)
    name = prefix or ""
    if f"{prefix}omni_mask" in cases:
      from showo2_jax.models.omni_mask import omni_attention_mask  # pylint: disable=import-outside-toplevel
      ours = np.asarray(omni_attention_mask(mp, tokens.shape[1]))
      ref = cases[f"{prefix}omni_mask"].reshape(ours.shape)
      results.append((f"{name}omni_mask (mismatches)", float(np.sum(ours != ref)), 0.5))
    results.append((f"{name}logits", relative_error(out["logits"], cases[f"{prefix}logits"]), OUTPUT_THRESHOLD))
    if f"{prefix}loss_ntp" in cases:
      loss = s2.ntp_loss(out["logits"], jnp.asarray(cases[f"{prefix}text_labels"]))
      results.append((f"{name}loss_ntp", relative_error(loss, cases[f"{prefix}loss_ntp"]), LOSS_THRESHOLD))
    if f"{prefix}loss_flow" in cases:
      loss = s2.flow_loss(out["v_tok"], jnp.asarray(cases[f"{prefix}image_labels"]),
                          jnp.asarray(cases[f"{prefix}image_masks"]), mp)
      results.append((f"{name}loss_flow", relative_error(loss, cases[f"{prefix}loss_flow"]), LOSS_THRESHOLD))
    key = f"{prefix}v_pred"
    if key in cases:
      v = s2.velocity_per_slot(out["v_tok"], mp, latents.shape[2:], config.latent_channels)
      valid = _real_slots(np.asarray(mp))
      results.append((key, relative_error(np.asarray(v)[valid], cases[key]), OUTPUT_THRESHOLD))

  if "text_tokens" in cases:
    image_case("")
  if "video_text_tokens" in cases:
    image_case("video_")
  if "text_only_tokens" in cases:
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, jnp.asarray(cases["text_only_tokens"]))
    results.append(("text_only_logits", relative_error(out["logits"], cases["text_only_logits"]), OUTPUT_THRESHOLD))
  return results


def _real_slots(modality_positions: np.ndarray) -> np.ndarray:
  """Slots the original returns: per row, those before the first empty one."""
  lengths = modality_positions[..., 1]
  keep = np.cumprod(lengths > 0, axis=1).astype(bool)
  return keep.reshape(-1)
