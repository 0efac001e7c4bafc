"""Shared test fixtures: where the golden outputs of the original live."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHOWO2_SHARED_DIR", REPO_ROOT.parent / "shared"))
FIXTURES_DIR = SHARED_DIR / "fixtures"


def _fixture_dir(name: str) -> Path:
  """The golden outputs of the original live outside the repository (../shared, or
  $SHOWO2_SHARED_DIR); without them the tests that compare against them skip, saying so."""
  path = FIXTURES_DIR / name
  if not path.is_dir():
    pytest.skip(f"golden fixtures not found at {path}: set SHOWO2_SHARED_DIR to the folder "
                f"holding fixtures/{name} (default: ../shared next to the repository)")
  return path


@pytest.fixture(scope="session")
def showo2_fixture_dir() -> Path:
  return _fixture_dir("showo2")


@pytest.fixture(scope="session")
def wan_vae_fixture_dir() -> Path:
  return _fixture_dir("wan_vae")


@pytest.fixture(scope="session")
def gcs_emulator():
  """A GCS emulator on 127.0.0.1 (free port) for the whole session: (server, host URL)."""
  from tests import gcs_emulator as emulator  # pylint: disable=import-outside-toplevel
  server, host = emulator.start()
  yield server, host
  server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch):
  """`gs://<fresh bucket>` on the emulator; this process and its children talk to it
  (STORAGE_EMULATOR_HOST and what showo2_jax.paths derives from it are set for the test)."""
  from tests import gcs_emulator as emulator  # pylint: disable=import-outside-toplevel
  from showo2_jax import paths  # pylint: disable=import-outside-toplevel
  server, host = gcs_emulator
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
  for key in emulator.DERIVED_ENV:
    monkeypatch.delenv(key, raising=False)
  paths.configure_storage()
  for key in emulator.DERIVED_ENV:  # undone after the test, like STORAGE_EMULATOR_HOST
    monkeypatch.setenv(key, os.environ[key])
  yield f"gs://{emulator.new_bucket(server)}"
  monkeypatch.undo()
  paths._forget_epath_backend_choice()  # pylint: disable=protected-access
