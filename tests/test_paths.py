"""showo2_jax.paths: the same calls on a local folder and on gs:// (a real GCS API,
the emulator), and STORAGE_EMULATOR_HOST alone reaching Orbax/tensorstore."""
import os
import subprocess
import sys
import textwrap

import pytest

from showo2_jax import paths
from tests import gcs_emulator as emulator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "root")
  return request.getfixturevalue("gcs_bucket") + "/root"


def test_write_read_list_glob_remove(root):
  paths.write_text(paths.join(root, "a", "config.json"), '{"x": "ü"}')
  paths.write_bytes(paths.join(root, "a", "b.bin"), b"\x00\x01")
  with paths.open(paths.join(root, "a", "c.txt"), "w") as f:
    f.write("line\n")
  assert paths.read_text(paths.join(root, "a", "config.json")) == '{"x": "ü"}'
  assert paths.read_bytes(paths.join(root, "a", "b.bin")) == b"\x00\x01"
  assert paths.listdir(paths.join(root, "a")) == ["b.bin", "c.txt", "config.json"]
  assert paths.isdir(paths.join(root, "a")) and paths.isfile(paths.join(root, "a", "c.txt"))
  assert not paths.exists(paths.join(root, "missing"))
  assert [paths.name(p) for p in paths.glob(paths.join(root, "a", "*.txt"))] == ["c.txt"]
  assert paths.parent(paths.join(root, "a", "c.txt")) == paths.join(root, "a")
  paths.rename(paths.join(root, "a", "c.txt"), paths.join(root, "kept", "c.txt"))
  assert paths.read_text(paths.join(root, "kept", "c.txt")) == "line\n"
  with paths.local_copy(paths.join(root, "a")) as local:
    assert sorted(os.listdir(local)) == ["b.bin", "config.json"]
  paths.remove(paths.join(root, "a"))
  assert not paths.exists(paths.join(root, "a"))
  paths.remove(paths.join(root, "a"))  # missing: no error


def test_uris_stay_uris_and_local_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.as_str("gs://b/run") == "gs://b/run"
  assert paths.join("gs://b/run", "checkpoints", "7") == "gs://b/run/checkpoints/7"
  assert paths.is_uri("gs://b") and not paths.is_uri("run")
  assert paths.as_str("run") == str(tmp_path / "run")
  assert paths.name("gs://b/run/") == "run" and paths.name("x/y") == "y"


def _orbax_round_trip(host: str, run: str, tmp_path) -> None:
  """In a child process with STORAGE_EMULATOR_HOST=host alone: an Orbax save and
  restore under `run` (gs://) and a text file through showo2_jax.paths."""
  script = textwrap.dedent(f"""
    import jax.numpy as jnp, orbax.checkpoint as ocp
    from showo2_jax import paths
    paths.write_text("{run}/note.txt", "hi")
    with ocp.CheckpointManager("{run}/ckpt") as mgr:
      mgr.save(3, args=ocp.args.StandardSave({{"w": jnp.arange(4.0)}}))
      mgr.wait_until_finished()
    with ocp.CheckpointManager("{run}/ckpt") as mgr:
      out = mgr.restore(3, args=ocp.args.StandardRestore({{"w": jnp.zeros(4)}}))
    print("RESTORED", out["w"].tolist(), paths.read_text("{run}/note.txt"))
    print("FILES", sorted(paths.listdir("{run}/ckpt/3")))
  """)
  env = emulator.environ(host)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  work = tmp_path / "cwd"
  work.mkdir()
  proc = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "RESTORED [0.0, 1.0, 2.0, 3.0] hi" in proc.stdout
  assert os.listdir(work) == []  # no ./gs:/ folder
  assert "commit_success.txt" in proc.stdout  # Orbax's GCS completion mark


def test_storage_emulator_host_alone_reaches_orbax(gcs_emulator, gcs_bucket, tmp_path):
  """A user sets STORAGE_EMULATOR_HOST and nothing else: epath (directories) and
  tensorstore (arrays) both talk to the emulator, and nothing is written locally."""
  _orbax_round_trip(gcs_emulator[1], gcs_bucket + "/run", tmp_path)


@pytest.mark.slow
def test_the_users_emulator_command_serves_orbax(tmp_path):
  """`python -m showo2_jax.testing.gcs_emulator` (what docs/training.md tells users to
  run) prints the line to export, creates the bucket, and Orbax saves to it."""
  env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST",) + emulator.DERIVED_ENV}
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.Popen([sys.executable, "-m", "showo2_jax.testing.gcs_emulator", "--port", "0",
                           "--bucket", "user-bucket"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline().strip()
    assert line.startswith("export STORAGE_EMULATOR_HOST=http://127.0.0.1:"), (
        line + proc.stderr.read() if proc.poll() is not None else line)
    host = line.split("=", 1)[1]
    assert not host.endswith(":0")
    _orbax_round_trip(host, "gs://user-bucket/run", tmp_path)
  finally:
    proc.terminate()
    proc.wait(timeout=30)
