"""Parity of the Flax Wan VAE with golden outputs of the original PyTorch code.

Reads any directory laid out as shared/fixtures/wan_vae (config.json, model.safetensors
with the original key names, cases.npz), whatever its widths, depths, frame counts or
H != W, and reports relative errors ||ours - ref|| / ||ref|| per output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from showo2_jax.parity.metrics import relative_error
from showo2_jax.convert import loading as convert_loading
from showo2_jax.vae import wan

THRESHOLD = 1e-4



def _decoded(params, latents, cfg, ref):
  # The fixture stores the raw decoder output (WanVAE_.decode, not clamped); a reference
  # entirely within [-1, 1] may also be the clamped batch_decode output: compare like
  # with like.
  clamp = bool(np.abs(ref).max() <= 1.0)
  return wan.decode_video(params, latents, cfg, clamp=clamp)


def run_wan_vae_parity(fixture_dir) -> list[tuple[str, float, float]]:
  """[(name, rel_err, threshold)] for image/video mu, logvar and decoded in cases.npz.

  Decoding starts from the reference mu, so decoder errors are not compounded with
  encoder ones. Cases missing from cases.npz are skipped.
  """
  fixture_dir = Path(fixture_dir)
  cfg = wan.WanVAEConfig.from_json(fixture_dir / "config.json")
  params = convert_loading.load_wan_vae_params(fixture_dir / "model.safetensors", cfg)
  with np.load(fixture_dir / "cases.npz") as npz:
    cases = {k: npz[k] for k in npz.files}
  results = []
  for case in ("image", "video"):
    if case not in cases:
      continue
    mu, logvar = wan.encode_posterior(params, cases[case], cfg)
    if f"{case}_mu" in cases:
      results.append((f"{case}_mu", relative_error(mu, cases[f"{case}_mu"]), THRESHOLD))
    if f"{case}_logvar" in cases:
      results.append((f"{case}_logvar", relative_error(logvar, cases[f"{case}_logvar"]),
                      THRESHOLD))
    if f"{case}_decoded" in cases and f"{case}_mu" in cases:
      ref = cases[f"{case}_decoded"]
      ours = _decoded(params, cases[f"{case}_mu"], cfg, ref)
      results.append((f"{case}_decoded", relative_error(ours, ref), THRESHOLD))
  return results
