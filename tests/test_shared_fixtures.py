"""Without ../shared the fixture tests skip with a reason naming SHOWO2_SHARED_DIR."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_fixture_dir_skips_naming_the_variable(monkeypatch, tmp_path):
  """In process: the fixture lookup skips (not fails) and says what to set."""
  monkeypatch.setattr(conftest, "FIXTURES_DIR", tmp_path / "no_shared" / "fixtures")
  with pytest.raises(pytest.skip.Exception, match="set SHOWO2_SHARED_DIR"):
    conftest._fixture_dir("showo2")  # pylint: disable=protected-access


@pytest.mark.slow
def test_missing_shared_dir_skips_with_the_variable_named(tmp_path):
  env = dict(os.environ, SHOWO2_SHARED_DIR=str(tmp_path / "no_shared"))
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p", "no:cacheprovider",
       "tests/convert/test_roundtrip.py::test_showo2_fixture_round_trip_is_bit_exact",
       "tests/convert/test_roundtrip.py::test_wan_vae_round_trip"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "2 skipped" in out.stdout and "error" not in out.stdout.lower()
  assert "set SHOWO2_SHARED_DIR" in out.stdout
