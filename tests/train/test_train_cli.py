"""`showo2-jax train` / `compile` argument handling and --config.key=value overrides."""
import argparse
import subprocess
import sys

import pytest

from showo2_jax.cli import main as cli_main
from showo2_jax.config_lib import load_config
from showo2_jax.train import config_overrides
from tests.train import runs


def test_overrides_parse_by_field_type():
  c = load_config("tiny_train")
  pairs, rest = config_overrides.split_overrides(
      ["--config.train.num_steps=7", "--config.optim.learning_rate", "3e-4", "--workdir", "w",
       "--config.train.frozen=showo,und_trans", "--config.checkpoint.async_save=false",
       "--config.mesh.data=2"])
  assert rest == ["--workdir", "w"]
  config_overrides.apply(c, pairs)
  assert c.train.num_steps == 7 and c.optim.learning_rate == 3e-4
  assert c.train.frozen == ("showo", "und_trans") and c.checkpoint.async_save is False
  assert c.mesh.data == 2


def test_unknown_or_mistyped_override_is_an_error():
  c = load_config("tiny_train")
  with pytest.raises(config_overrides.OverrideError, match="num_stepz"):
    config_overrides.apply(c, [("train.num_stepz", "1")])
  with pytest.raises(config_overrides.OverrideError, match="expected an int"):
    config_overrides.apply(c, [("train.num_steps", "many")])


def test_subcommand_parser_collects_overrides():
  parser = argparse.ArgumentParser()
  sub = parser.add_subparsers(dest="command")
  from showo2_jax.cli import train as train_cli
  train_cli.add_arguments(sub.add_parser("train"))
  args = parser.parse_args(["train", "--config", "tiny_train", "--workdir", "/tmp/x",
                            "--config.train.num_steps=5"])
  assert args.config == "tiny_train" and args.config_overrides == [("train.num_steps", "5")]


def test_cli_reports_a_bad_override_in_one_line(tmp_path, capsys):
  rc = cli_main.main(["train", "--config", "tiny_train", "--workdir", str(tmp_path),
                      "--config.train.nope=1"])
  assert rc == 1
  assert "no field 'nope'" in capsys.readouterr().err


def _compile(*args):
  return subprocess.run(
      [sys.executable, "-m", "showo2_jax.cli.main", "compile", "--config", "tiny_train", *args],
      env=runs.env(1), cwd=runs.REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_compile_prints_memory_per_device_for_a_data_file(tmp_path):
  """`compile --data FILE` sizes the step for the file's streams (here 2 VIST slots per
  row) without reading their paths, and checks their rows against the global batch."""
  data = tmp_path / "data.yaml"
  data.write_text("streams:\n"
                  "  t2i: {task: t2i, path: /cluster/t2i/*.jsonl, batch_size: 5}\n"
                  "  vist: {task: vist, path: /cluster/vist.json, batch_size: 3, max_num_images: 2}\n")
  out = _compile("--topology", "cpu:4", "--data", str(data), "--config.mesh.fsdp=2",
                 "--config.mesh.tensor=2")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "data: t2i 5 + vist 3 rows per host x 1 host(s) = global batch 8" in out.stdout
  assert "modality_positions (8, 2, 2) int32, latents (8, 2, 16, 8, 8) float32" in out.stdout
  assert "devices: 4 (cpu), mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in out.stdout
  assert "per device peak" in out.stdout
  bad = _compile("--topology", "cpu:1", "--data", str(data), "--config.train.global_batch_size=16")
  assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
  assert f"{data}: the data streams give 8 rows per host (t2i 5 + vist 3) x 1 host(s) = 8, " \
         "but config.train.global_batch_size is 16" in bad.stderr
