"""Param / optimizer-state shardings whose dimensions the mesh axes do not divide
(SigLIP's 1152-wide embed over fsdp=256): re-laid out so the step can be lowered."""
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from showo2_jax import sharding

from tests.train import runs

SIZES = {"data": 2, "fsdp": 256, "tensor": 1}


@pytest.mark.parametrize("spec, shape, want", [
    (P("fsdp", "tensor"), (1536, 8960), P("fsdp", "tensor")),      # divisible: unchanged
    (P("fsdp", "tensor"), (1152, 4304), P(None, "tensor")),        # neither dim takes 256: replicated
    (P("fsdp", None), (1152, 4096), P(None, "fsdp")),              # fsdp moves to the dim it divides
    (P(None, "fsdp"), (4096, 8, 1152), P("fsdp")),                 # ... the largest such dim
    (P(("data", "fsdp")), (24,), P("data")),                       # the prefix that divides is kept
    (P(), (), P()),                                                 # scalars
])
def test_fit_spec_keeps_what_divides_and_moves_the_rest(spec, shape, want):
  assert sharding.fit_spec(spec, shape, SIZES) == want


SCRIPT = textwrap.dedent("""
    import logging
    import jax, numpy as np
    logging.basicConfig(level=logging.INFO)
    from showo2_jax import config_lib, sharding
    from showo2_jax.train import aot, state as state_lib
    c = config_lib.load_config("tiny_train")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 32, 1
    c.train.global_batch_size = 32
    devs = aot.tpu_devices("v5p:2x4x4")                # 32 abstract chips; nothing compiles
    lowered, lay = aot.lower_train_step(c, devs)
    sizes = dict(lay.mesh.shape)
    moved = 0
    for path, a in jax.tree_util.tree_leaves_with_path(lay.abstract):
      for dim, entry in zip(a.shape, tuple(a.sharding.spec)):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        assert dim % int(np.prod([sizes[x] for x in axes])) == 0, (path, a.shape, a.sharding.spec)
      fsdp_dims = [d for d, e in zip(a.shape, tuple(a.sharding.spec)) if e and "fsdp" in e]
      moved += 48 in a.shape and bool(fsdp_dims) and 48 not in fsdp_dims
    print("OK", moved)
""")


@pytest.mark.slow
def test_tiny_step_lowers_with_fsdp_wider_than_its_siglip_dims():
  """tiny_train's SigLIP is 48 wide: fsdp=32 divides none of its embed dims."""
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=runs.env(1), cwd=runs.REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "do not divide by their mesh axes and were re-laid out" in proc.stderr
  assert int(proc.stdout.split("OK")[1].split()[0]) > 0     # SigLIP kernels: fsdp moved off the 48-wide dim
