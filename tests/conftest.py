"""Shared test fixtures: where the golden outputs of the original live."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHOWO2_SHARED_DIR", REPO_ROOT.parent / "shared"))
FIXTURES_DIR = SHARED_DIR / "fixtures"


@pytest.fixture(scope="session")
def showo2_fixture_dir() -> Path:
  path = FIXTURES_DIR / "showo2"
  assert path.is_dir(), f"golden fixtures missing at {path} (set SHOWO2_SHARED_DIR)"
  return path


@pytest.fixture(scope="session")
def wan_vae_fixture_dir() -> Path:
  path = FIXTURES_DIR / "wan_vae"
  assert path.is_dir(), f"golden fixtures missing at {path} (set SHOWO2_SHARED_DIR)"
  return path
