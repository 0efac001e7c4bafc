"""The one error measure of the parity checks (`showo2-jax check-parity`, tests)."""
from __future__ import annotations

import numpy as np


def relative_error(ours, ref) -> float:
  """||ours - ref|| / ||ref|| (Frobenius, in float64); ||ours|| when `ref` is all zeros.

  Raises ValueError if the shapes differ (a broadcast would hide a layout bug).
  """
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise ValueError(f"shape mismatch: ours {ours.shape} vs reference {ref.shape}")
  denom = np.linalg.norm(ref)
  return float(np.linalg.norm(ours - ref) / (denom if denom > 0 else 1.0))
