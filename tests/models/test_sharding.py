"""A tiny sharded forward on 8 fake CPU devices equals the unsharded one."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from showo2_jax import sharding
    from showo2_jax.convert.showo2_torch import abstract_params, load_original
    from showo2_jax.models.showo2 import Showo2
    assert jax.device_count() == 8
    fixture = sys.argv[1]
    d = np.load(os.path.join(fixture, "cases.npz"))
    inputs = [jnp.asarray(d[k]) for k in ("text_tokens", "image_latents", "t", "modality_positions")]
    for scan in (False, True):
      cfg, params = load_original(fixture, scan_layers=scan)
      model = Showo2(cfg)
      f = lambda p, *a: model.apply({"params": p}, *a)
      plain = jax.jit(f)(params, *inputs)
      for mesh_cfg in ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 8, "tensor": 1},
                       {"data": 2, "fsdp": 1, "tensor": 4}):
        mesh = sharding.create_mesh(mesh_cfg)
        ps = jax.device_put(params, sharding.mesh_shardings(abstract_params(cfg), mesh))
        with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else mesh, sharding.axis_rules():
          out = jax.jit(f)(ps, *inputs)
        for k in ("logits", "v_tok"):
          err = float(jnp.linalg.norm(out[k] - plain[k]) / jnp.linalg.norm(plain[k]))
          assert err < 1e-5, (scan, mesh_cfg, k, err)
        n_sharded = sum(1 for x in jax.tree.leaves(ps) if not x.sharding.is_fully_replicated)
        assert n_sharded > 0, mesh_cfg
    print("OK")
""")


@pytest.mark.slow
def test_sharded_forward_on_8_fake_devices_matches_unsharded(showo2_fixture_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(showo2_fixture_dir)], env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
