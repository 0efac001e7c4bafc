"""A host that compiles the step 35 s after its peer still joins the step's collectives.

CPU collectives (gloo) give up when a peer is 30 s late to the first collective,
which is what broke the 2-process training run under load: one process finished
compiling more than 30 s before the other and waited inside the step. The trainer
compiles ahead (`trainer._compile_step`) and meets the other processes at a
coordination-service barrier before the first run; here process 1 reaches it 35 s
late, and the cross-process sum still comes out right.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.train import runs

_CHILD = textwrap.dedent("""
  import sys, time
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from showo2_jax.train import distributed, trainer
  port, pid, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  distributed.initialize(f"localhost:{port}", 2, pid)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  spec = NamedSharding(mesh, P("data"))
  x = jax.make_array_from_process_local_data(spec, np.full((1, 4), pid + 1.0, np.float32))
  step = jax.jit(lambda x, y, rng: (x, jnp.sum(x, axis=0)), out_shardings=(spec, NamedSharding(mesh, P())))
  time.sleep(delay)
  compiled = trainer._compile_step(step, x, x, np.zeros((2,), np.uint32))
  _, total = compiled(x, x, np.zeros((2,), np.uint32))
  print("TOTAL", float(np.asarray(total)[0]), flush=True)
""")



@pytest.mark.multiprocess
@pytest.mark.slow
def test_late_compiler_still_joins_the_first_collective(tmp_path):
  port = runs.free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(port), str(i), str(35.0 * i)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
  for out in outs:
    assert "TOTAL 3.0" in out, out[-3000:]
