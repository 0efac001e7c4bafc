"""The reference run that the sharding, multi-process and resume tests compare to."""
import pytest

from tests.train import runs


@pytest.fixture(scope="session")
def reference_metrics(tmp_path_factory):
  """12 steps of tiny_train on 1 process, 1 device, losses logged every step."""
  workdir = tmp_path_factory.mktemp("reference")
  metrics = runs.run(workdir)
  assert sorted(metrics) == list(range(1, 13)), metrics.keys()
  return metrics
