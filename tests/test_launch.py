"""launch/*.sh: --dry-run prints every command; real runs keep each host's exit code.

The real-run tests put a fake `gcloud` first on PATH that answers each worker's ssh
with a chosen exit code (what the remote `showo2-jax train | tee` returned).
"""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def _run(script, env_extra, *args, path_prefix=None):
  env = {k: v for k, v in os.environ.items() if k not in ("NUM_WORKERS",)}
  env.update(env_extra)
  if path_prefix:
    env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=env, capture_output=True,
                        text=True, timeout=60)


def _words(command_line):
  """The words bash makes of a printed command (it may use $'...' quoting)."""
  out = subprocess.run(["bash", "-c", 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', "_",
                        command_line], capture_output=True, text=True, check=True).stdout
  return out.split("\0")[:-1]


def _ssh_lines(out):
  return [line for line in out.splitlines() if " ssh " in line]


def _remote_command(line):
  words = _words(line.split(": ", 1)[1])
  return words[words.index("--command") + 1]


def test_pod_dry_run_prints_one_ssh_per_worker_with_pipefail():
  p = _run("tpu_vm_pod.sh", {"TPU_NAME": "v5p", "ZONE": "us-east5-a", "WORKDIR": "gs://b/run",
                             "NUM_WORKERS": "3"},
           "--dry-run", "--config", "stage1_1p5b", "--config.tokenizer_path=/data/a b")
  assert p.returncode == 0, p.stderr
  lines = _ssh_lines(p.stdout)
  assert len(lines) == 3
  for w, line in enumerate(lines):
    words = _words(line.split(": ", 1)[1])
    assert words[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5p", "--zone"]
    assert f"--worker={w}" in words
    remote = _remote_command(line)
    assert remote.startswith("set -eo pipefail\n")
    train = remote.splitlines()[-1]
    assert shlex.split(train)[:8] == ["showo2-jax", "train", "--workdir", "gs://b/run", "--config",
                                      "stage1_1p5b", "--config.tokenizer_path=/data/a b", "2>&1"]
    assert train.endswith("| tee -a /tmp/showo2_train.log")


def test_multislice_dry_run_sets_megascale_per_slice():
  p = _run("tpu_multislice.sh", {"TPU_PREFIX": "s", "ZONE": "z", "NUM_SLICES": "2",
                                 "WORKDIR": "gs://b/r", "NUM_WORKERS": "2"},
           "--config", "stage2_1p5b:c", "--dry-run")
  assert p.returncode == 0, p.stderr
  assert "[dry-run] coordinator: gcloud compute tpus tpu-vm describe s-0" in p.stdout
  lines = _ssh_lines(p.stdout)
  assert len(lines) == 4
  for i, line in enumerate(lines):
    remote = _remote_command(line)
    assert remote.startswith("set -eo pipefail\n")
    assert f"export MEGASCALE_SLICE_ID={i // 2}" in remote
    assert "export MEGASCALE_NUM_SLICES=2" in remote
    assert f"ssh s-{i // 2} " in line and f"--worker={i % 2}" in line


def test_gpu_dry_run():
  p = _run("gpu_single_host.sh", {"WORKDIR": "/runs/x"}, "--dry-run", "--config", "c")
  assert p.returncode == 0, p.stderr
  assert "showo2-jax train --workdir /runs/x --config c" in p.stdout


def _fake_gcloud(tmp_path, codes):
  """`gcloud ... ssh ... --worker=W ...` exits codes[W]; `describe` prints one IP per worker."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  cases = "\n".join(f"    --worker={w}) exit {c} ;;" for w, c in enumerate(codes))
  (bin_dir / "gcloud").write_text(f"""#!/usr/bin/env bash
if [[ " $* " == *" describe "* ]]; then
  echo "{';'.join(f'10.0.0.{w}' for w in range(len(codes)))}"; exit 0
fi
for a in "$@"; do
  case "$a" in
{cases}
  esac
done
exit 99
""")
  (bin_dir / "gcloud").chmod(0o755)
  return bin_dir


@pytest.mark.parametrize("codes,worst", [([0, 0], 0), ([0, 143], 143), ([143, 3, 0], 3),
                                         ([1, 143], 1)])
def test_pod_returns_the_worst_host_exit_code(tmp_path, codes, worst):
  fake = _fake_gcloud(tmp_path, codes)
  p = _run("tpu_vm_pod.sh", {"TPU_NAME": "v5p", "ZONE": "z", "WORKDIR": "gs://b/run"},
           "--config", "c", path_prefix=fake)
  assert p.returncode == worst, (p.stdout, p.stderr)
  for w, c in enumerate(codes):
    assert f"host v5p/{w}: exit {c}" in p.stderr


def test_multislice_returns_the_worst_host_exit_code(tmp_path):
  fake = _fake_gcloud(tmp_path, [0, 143])
  p = _run("tpu_multislice.sh", {"TPU_PREFIX": "s", "ZONE": "z", "NUM_SLICES": "2",
                                 "WORKDIR": "gs://b/r"}, "--config", "c", path_prefix=fake)
  assert p.returncode == 143, (p.stdout, p.stderr)
  assert p.stderr.count(": exit ") == 4
