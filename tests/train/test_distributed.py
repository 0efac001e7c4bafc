"""8 fake devices in 2 processes give the losses of 1 device in 1 process.

One run covers both: `jax.distributed` with 2 processes of 4 CPU devices each, a
`(data, fsdp, tensor) = (2, 2, 2)` mesh (data across the processes, FSDP and
tensor parallelism inside each), every process reading only its rows. Every
random draw in the step comes from jax.random with partitionable threefry, so
it depends on the global index only; what may differ is the order of
floating-point reductions across devices, hence a tolerance rather than
equality. The run is compared with the first steps of the shared 1-device
reference, asked for only after the run is done, so this xdist worker does not
wait for the one that may still be producing it.
"""

import numpy as np
import pytest

from tests.train import runs

RTOL = 2e-4



@pytest.mark.multiprocess
@pytest.mark.slow
def test_8_fake_devices_in_2_processes_match_1_device(tmp_path, request):
  port = runs.free_port()
  procs = [runs.start(tmp_path, *runs.SHORT_RUN, f"--coordinator_address=localhost:{port}",
                      "--num_processes=2", f"--process_id={i}", "--config.mesh.data=2",
                      "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=4,
                      log_name=f"log{i}.txt")
           for i in range(2)]
  codes = [p.wait(timeout=400) for p in procs]
  assert codes == [0, 0], runs.log_tail(tmp_path, "log0.txt") + runs.log_tail(tmp_path, "log1.txt")
  log = runs.log_tail(tmp_path, "log0.txt", chars=100_000)
  assert "process 0 of 2, 4 local / 8 global devices" in log, log[-2000:]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 devices" in log, log[-2000:]

  metrics = runs.read_metrics(tmp_path)
  reference = request.getfixturevalue("reference_metrics")
  steps = list(range(1, runs.SHORT_STEPS + 1))
  assert sorted(metrics) == steps
  for key in ("loss", "ntp_loss", "flow_loss", "grad_norm"):
    np.testing.assert_allclose(runs.losses(metrics, key), runs.losses(reference, key, steps),
                               rtol=RTOL, err_msg=key)
