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


def _boxed(shape, names):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names=names)


# A wide "LLM" kernel every fsdp size divides, and a "SigLIP" kernel whose dims 8 divides
# neither of (12 = 4 x 3, 180 = 4 x 45): fsdp=8 replicates it, fsdp=4 shards it.
TREE = dict(llm=_boxed((64, 32), ("embed", "mlp")), vit=_boxed((12, 180), ("embed", "mlp")))
ONE_SLICE = (1, 1, 1)


def test_bytes_per_device_counts_replicated_arrays_whole():
  sizes = {"data": 1, "fsdp": 8, "tensor": 1}
  assert sharding.bytes_per_device(TREE, sizes) == 64 * 32 * 4 // 8 + 12 * 180 * 4
  sizes = {"data": 2, "fsdp": 4, "tensor": 1}
  assert sharding.bytes_per_device(TREE, sizes) == 64 * 32 * 4 // 4 + 12 * 180 * 4 // 4


def test_fit_mesh_config_moves_devices_to_data_when_fsdp_would_replicate():
  cfg, reason = sharding.fit_mesh_config({"data": 1, "fsdp": -1, "tensor": 1}, 8, ONE_SLICE, TREE)
  assert (cfg["data"], cfg["fsdp"], cfg["tensor"]) == (2, 4, 1)
  assert "data=2 x fsdp=4 instead of data=1 x fsdp=8" in reason


def test_fit_mesh_config_keeps_a_dividing_or_explicit_fsdp():
  llm_only = dict(llm=TREE["llm"])
  assert sharding.fit_mesh_config({"data": 1, "fsdp": -1, "tensor": 1}, 8, ONE_SLICE, llm_only) == (
      {"data": 1, "fsdp": -1, "tensor": 1}, None)
  assert sharding.fit_mesh_config({"data": 1, "fsdp": 8, "tensor": 1}, 8, ONE_SLICE, TREE) == (
      {"data": 1, "fsdp": 8, "tensor": 1}, None)


FAKE_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from tests.models.test_sharding_fit import TREE
    from showo2_jax import sharding
    assert jax.device_count() == 8
    cfg = {"data": 1, "fsdp": -1, "tensor": 1}
    shapes = lambda mesh: {k: jax.device_put(np.zeros(v.value.shape, np.float32), s).addressable_shards[0].data.shape
                           for (k, v), s in zip(TREE.items(), sharding.mesh_shardings(TREE, mesh).values())}
    print("PLAIN", dict(sharding.create_mesh(cfg).shape), shapes(sharding.create_mesh(cfg)))
    mesh = sharding.create_mesh(cfg, fit_to=TREE)
    print("FIT", dict(mesh.shape), shapes(mesh))
""")


def test_create_mesh_fit_to_shards_what_fsdp_8_replicates_on_8_fake_devices():
  proc = subprocess.run([sys.executable, "-c", FAKE_DEVICES], env=runs.env(8), cwd=runs.REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:4] in ("PLAI", "FIT "))
  # fsdp=8: the 12 x 180 kernel is whole on every device (replicated)
  assert out["PLAIN"] == "{'data': 1, 'fsdp': 8, 'tensor': 1} {'llm': (8, 32), 'vit': (12, 180)}"
  # chosen data=2 x fsdp=4: it is sharded 4 ways, the reason is printed
  assert out["FIT"] == "{'data': 2, 'fsdp': 4, 'tensor': 1} {'llm': (16, 32), 'vit': (3, 180)}"
  assert "data=2 x fsdp=4 instead of data=1 x fsdp=8" in proc.stderr
