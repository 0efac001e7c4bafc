"""A workdir that cannot hold the run is refused in one line before anything is built."""
import pytest

from showo2_jax.cli import main as cli_main
from showo2_jax.config_lib import load_config
from showo2_jax.train import workdir


def _old_run(path, config_name):
  """A workdir as a run of `config_name` leaves it: its config.json and a checkpoint."""
  path.mkdir()
  (path / "config.json").write_text(load_config(config_name).to_json_best_effort(indent=2))
  (path / "checkpoints" / "100").mkdir(parents=True)
  return path


def test_workdir_of_another_config_is_one_line(tmp_path, capsys):
  wd = _old_run(tmp_path / "run", "small_train")
  rc = cli_main.main(["train", "--config", "tiny_train", "--workdir", str(wd)])
  err = capsys.readouterr().err
  assert rc == 1 and "Traceback" not in err
  assert "holds a run of another config" in err and "model." in err
  assert len(err.strip().splitlines()) == 1 and len(err) < 1000
  # The saved config of the old run is left alone.
  assert (wd / "config.json").read_text() == load_config("small_train").to_json_best_effort(indent=2)


def test_workdir_naming_a_file_is_one_line(tmp_path, capsys):
  f = tmp_path / "not_a_dir"
  f.write_text("x")
  rc = cli_main.main(["train", "--config", "tiny_train", "--workdir", str(f)])
  err = capsys.readouterr().err
  assert rc == 1 and "is a file" in err and "Traceback" not in err


def test_resuming_with_more_steps_or_other_logging_is_allowed(tmp_path):
  wd = _old_run(tmp_path / "run", "tiny_train")
  c = load_config("tiny_train")
  c.train.num_steps = 600
  c.train.log_every = 1
  workdir.check(c, str(wd))  # no error
  c.train.frozen = ("showo",)
  with pytest.raises(workdir.WorkdirError, match="train.frozen"):
    workdir.check(c, str(wd))


def test_resuming_with_another_attention_kernel_or_remat_is_allowed(tmp_path):
  """Same params and optimizer state: started with splash on TPU, continued with
  flash on GPU (or another remat policy). A model width is still refused."""
  wd = _old_run(tmp_path / "run", "tiny_train")
  c = load_config("tiny_train")
  c.model.attention_impl, c.model.attention_chunk_size, c.model.remat_policy = "flash", 64, "full"
  workdir.check(c, str(wd))  # no error
  c.model.llm.hidden_size = 2 * c.model.llm.hidden_size
  with pytest.raises(workdir.WorkdirError, match="model.llm.hidden_size"):
    workdir.check(c, str(wd))

