"""The `showo2-jax` argument parser: no prefix matching, one-line errors, exit 1."""
import pytest

from showo2_jax.cli import main as cli


def _fails(capsys, *argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  err = capsys.readouterr().err
  assert e.value.code == 1, err
  assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err
  return err


def test_a_prefix_of_a_flag_is_not_that_flag(capsys, tmp_path):
  err = _fails(capsys, "train", "--config", "tiny_train", "--workdir", str(tmp_path), "--dat", "x")
  assert err.startswith("showo2-jax train: error: unrecognized arguments: --dat x"), err
  err = _fails(capsys, "convert", "export-run", "--work", str(tmp_path), "--out", str(tmp_path))
  assert "showo2-jax convert export-run: error:" in err and "--workdir" in err, err


def test_unknown_commands_and_bad_values_are_one_line(capsys):
  assert "invalid choice: 'nosuch'" in _fails(capsys, "nosuch")
  err = _fails(capsys, "generate", "--checkpoint", "x", "--tokenizer", "y", "a prompt",
               "--steps", "many")
  assert "showo2-jax generate: error: argument --steps" in err, err
