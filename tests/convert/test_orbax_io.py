"""Saving and restoring param trees, host-side and straight into mesh shardings."""
import os
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest

from showo2_jax import param_mapping
from showo2_jax.convert import orbax_io, pipeline
from showo2_jax.models.config import Qwen2Config


@pytest.fixture(scope="module")
def showo2_orbax(showo2_fixture_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("orbax_io")
  pipeline.to_orbax(str(showo2_fixture_dir), str(root / "plain"))
  pipeline.to_orbax(str(showo2_fixture_dir), str(root / "scanned"), scan_layers=True)
  return root


def test_save_and_restore_host_params(tmp_path):
  params = {"showo": {"model": {"norm": {"scale": np.arange(4, dtype=np.float32)},
                                "embed_tokens": {"embedding": np.ones((8, 4), ml_dtypes.bfloat16)}}}}
  cfg = Qwen2Config(vocab_size=8, hidden_size=4, intermediate_size=8, num_layers=0, num_heads=1,
                    num_kv_heads=1, head_dim=4)
  orbax_io.save_params(str(tmp_path / "ck"), params, cfg, kind="qwen2")
  kind, config, restored = orbax_io.restore_params(str(tmp_path / "ck"))
  assert kind == "qwen2" and config == cfg
  flat = param_mapping.flatten(restored)
  assert flat["showo/model/embed_tokens/embedding"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(flat["showo/model/norm/scale"], np.arange(4))
  _, _, as_f32 = orbax_io.restore_params(str(tmp_path / "ck"), dtype=np.float32)
  assert param_mapping.flatten(as_f32)["showo/model/embed_tokens/embedding"].dtype == np.float32
  with pytest.raises(FileExistsError):
    orbax_io.save_params(str(tmp_path / "ck"), params, cfg, kind="qwen2")
  orbax_io.save_params(str(tmp_path / "ck"), params, cfg, kind="qwen2", overwrite=True)


def test_restore_into_given_shardings(showo2_orbax):
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  kind, _, params = orbax_io.restore_params(str(showo2_orbax / "plain"), shardings=dev)
  leaf = params["fusion_proj"]["fc1"]["kernel"]
  assert isinstance(leaf, jax.Array) and leaf.sharding == dev
  wrong = {"fusion_proj": {"fc1": {"kernel": dev}}}
  with pytest.raises(KeyError, match="missing"):
    orbax_io.restore_params(str(showo2_orbax / "plain"), shardings=wrong)


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(orbax_io.OrbaxCheckpointError, match="not a showo2-jax param checkpoint"):
    orbax_io.read_meta(str(tmp_path))
  with pytest.raises(orbax_io.OrbaxCheckpointError, match="no such"):
    orbax_io.read_meta(str(tmp_path / "nope"))


# A fresh process: the fake 4-device CPU platform must be set before JAX starts.
_SHARDED_RESTORE = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from showo2_jax import param_mapping, sharding
    from showo2_jax.convert import orbax_io
    mesh = sharding.create_mesh({"data": 1, "fsdp": 2, "tensor": 2})
    for path in sys.argv[1:]:
      kind, config, params = orbax_io.restore_params(path, mesh=mesh)
      _, _, host = orbax_io.restore_params(path)
      flat, ref = param_mapping.flatten(params), param_mapping.flatten(host)
      split = 0
      for k, v in flat.items():
        assert v.sharding.mesh.shape == mesh.shape, k
        assert np.array_equal(np.asarray(v), ref[k]), k
        split += any(s.data.shape != v.shape for s in v.addressable_shards)
      emb = flat["showo/model/embed_tokens/embedding"]
      assert tuple(emb.sharding.spec) == ("tensor", "fsdp"), emb.sharding
      assert {s.data.shape for s in emb.addressable_shards} == {(156, 32)}
      print(kind, config.scan_layers, len(flat), split)
""")


@pytest.mark.slow
def test_sharded_restore_on_a_mesh(showo2_orbax):
  out = subprocess.run([sys.executable, "-c", _SHARDED_RESTORE, str(showo2_orbax / "plain"),
                        str(showo2_orbax / "scanned")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.split("\n")
  plain, scanned = [line.split() for line in lines if line.startswith("showo2")]
  assert plain[1] == "False" and scanned[1] == "True"
  assert int(plain[3]) > 50 and int(scanned[3]) > 20  # most leaves are split across devices
