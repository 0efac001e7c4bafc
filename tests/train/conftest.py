"""The reference run that the learning and the 8-device, 2-process tests share."""
import pytest

from tests.train import runs


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """Workdir of tiny_train's 300-step run on 1 process and 1 device, every step logged
  (runs.REFERENCE). Run once per session, also under xdist (runs.shared_run).

  Tests that launch their own subprocess ask for it only after that subprocess is
  done (`request.getfixturevalue`), so a worker computes its own run while the
  other may still be producing the reference, instead of waiting for it.
  """
  def make(workdir):
    runs.run(workdir, *runs.REFERENCE, timeout=600)
  return runs.shared_run(runs.session_root(tmp_path_factory) / "reference", make)


@pytest.fixture(scope="session")
def reference_metrics(reference_run):
  """step -> metrics of the reference run, steps 1..300."""
  metrics = runs.read_metrics(reference_run)
  assert sorted(metrics) == list(range(1, runs.REFERENCE_STEPS + 1)), sorted(metrics)[-5:]
  return metrics


