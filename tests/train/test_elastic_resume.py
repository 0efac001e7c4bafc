"""Elastic resume through the trainer's own data and checkpoint code: a data
position saved by 2 processes (jax.distributed, 1 device each, no data workers)
is restored by 1 process on 4 devices with another mesh and 1 data worker, and
the batches continue at the same global sample: per stream, the rows of the
steps before and after equal those of one uninterrupted 1-process run.

Each process is `tests/train/elastic_data_run.py` (no model, so no compilation).
"""
import json
import subprocess
import sys
import textwrap

import pytest

from showo2_jax.data import testing
from tests.train import runs


def _cmd(out, data, tok, workdir, steps, *extra):
  return [sys.executable, "-m", "tests.train.elastic_data_run", str(out), "--data", str(data),
          "--tok", str(tok), "--workdir", str(workdir), "--steps", str(steps), *extra]


def _run(procs, timeout=300):
  codes = [p.wait(timeout=timeout) for p in procs]
  return codes


def _start(cmd, devices, log):
  return subprocess.Popen(cmd, env=runs.env(devices), cwd=runs.REPO, stdout=open(log, "wb"),
                          stderr=subprocess.STDOUT)


def _streams(rows_per_process):
  """Per step: (generation rows, understanding rows), processes in order."""
  steps = []
  for per_step in zip(*rows_per_process):
    steps.append(([r for rows in per_step for r in rows if r.endswith("g")],
                  [r for rows in per_step for r in rows if r.endswith("u")]))
  return steps


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_to_one_with_another_mesh_and_workers(tmp_path):
  t2i = testing.write_image_text_dataset(tmp_path / "t2i", 7)
  data = tmp_path / "data.yaml"
  # Per-process rows for 2 processes: t2i 2 + mmu 1 (global 6); 1 process scales them to 4 + 2.
  data.write_text(textwrap.dedent(f"""\
      seed: 1
      streams:
        t2i: {{task: t2i, path: "{t2i}", batch_size: 2}}
        mmu: {{task: captioning, path: "{t2i}", batch_size: 1}}
      """))
  tok = testing.build_test_tokenizer(tmp_path / "tok")
  ref_out, work = tmp_path / "ref.json", tmp_path / "run"
  logs = [tmp_path / f"log{i}.txt" for i in range(4)]

  ref = _start(_cmd(ref_out, data, tok, tmp_path / "ref", 5), 1, logs[0])
  port = runs.free_port()
  pair = [_start(_cmd(tmp_path / f"a{i}.json", data, tok, work, 2, "--save",
                      f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
                 1, logs[1 + i]) for i in range(2)]
  codes = _run([ref] + pair)
  assert codes == [0, 0, 0], "\n".join(log.read_text(errors="replace")[-3000:] for log in logs[:3])
  after = _start(_cmd(tmp_path / "b.json", data, tok, work, 3, "--mesh=1,2,2", "--num_workers=1"),
                 4, logs[3])
  assert _run([after]) == [0], logs[3].read_text(errors="replace")[-3000:]

  load = lambda name: json.loads((tmp_path / name).read_text())
  want = _streams([load("ref.json")["rows"]])
  a = [load(f"a{i}.json") for i in range(2)]
  b = load("b.json")
  assert a[0]["state"]["positions"] == a[1]["state"]["positions"] == {"t2i": 8, "mmu": 4}
  assert b["restored"] == 2
  assert "data position saved by another number of processes" in logs[3].read_text()
  got = _streams([a[0]["rows"], a[1]["rows"]]) + _streams([b["rows"]])
  assert got == want
  generation = [r for step in want for r in step[0]]
  assert len(set(generation[:7])) == 7   # an epoch of 7 distinct samples: nothing repeated
