"""A command's stderr holds its own lines: no libtpu errors on a host without TPU
chips, no JAX backend probing, no Orbax INFO, no TensorFlow banners."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_check_parity_prints_no_library_banners(showo2_fixture_dir):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  out = subprocess.run([sys.executable, "-m", "showo2_jax.cli.main", "check-parity",
                        str(showo2_fixture_dir)], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  for noise in ("libtpu", "TPU_ACCELERATOR_TYPE", "InitGoogle", "xla_bridge", "absl", "oneDNN",
                "cpu_feature_guard"):
    assert noise not in out.stderr, out.stderr[-3000:]
  assert "[showo2] logits" in out.stdout
