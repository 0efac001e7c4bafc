"""The same global batch gives the same losses on 1 device, 8 devices, and 2 processes.

Every random draw in the step comes from jax.random with partitionable threefry,
so it depends on the global index only; what may differ is the order of
floating-point reductions across devices, hence a tolerance rather than equality.
"""
import socket

import numpy as np

from tests.train import runs

RTOL = 2e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _compare(metrics, reference):
  assert sorted(metrics) == sorted(reference)
  for key in ("loss", "ntp_loss", "flow_loss"):
    np.testing.assert_allclose(runs.losses(metrics, key), runs.losses(reference, key), rtol=RTOL,
                               err_msg=key)


def test_8_fake_devices_data_fsdp_tensor(tmp_path, reference_metrics):
  metrics = runs.run(tmp_path, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                     "--config.mesh.tensor=2", devices=8)
  _compare(metrics, reference_metrics)


def test_two_processes(tmp_path, reference_metrics):
  port = _free_port()
  procs = [runs.start(tmp_path, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                      f"--process_id={i}", log_name=f"log{i}.txt") for i in range(2)]
  codes = [p.wait(timeout=400) for p in procs]
  assert codes == [0, 0], runs.log_tail(tmp_path, "log0.txt") + runs.log_tail(tmp_path, "log1.txt")
  _compare(runs.read_metrics(tmp_path), reference_metrics)
