"""A wheel install finds the named configs as a source checkout does."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_the_configs(tmp_path):
  # Build from a copy so a stale build/ of the checkout cannot leak into the wheel.
  src = tmp_path / "src"
  shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
      ".git", "build", "dist", "*.egg-info", "__pycache__", "tests", "colabs", "benchmarks"))
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
  (wheel,) = wheels.glob("showo2_jax-*.whl")
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                  str(wheel)], check=True, capture_output=True, timeout=300)
  shutil.rmtree(src)  # nothing of the checkout is left to find
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHOWO2_CONFIG_DIR")}
  env["PYTHONPATH"] = str(site)  # before the editable install's finder
  code = ("import showo2_jax, showo2_jax.config_lib as c;"
          "print(showo2_jax.__file__); print(c.CONFIG_DIR);"
          "print(c.load_config('tiny_train').train.num_steps, c.load_config('stage1_1p5b:a').resolution);"
          "print(len(c.available_configs()))")
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  module, config_dir, values, count = out.stdout.split("\n")[:4]
  assert module.startswith(str(site)) and config_dir == str(site / "showo2_jax" / "configs")
  assert values == "300 432" and int(count) >= 10
  assert (site / "showo2_jax" / "configs" / "data" / "stage1.yaml").exists()  # the example data files
