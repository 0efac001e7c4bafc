"""The `showo2-jax convert` command line and its error messages."""
import numpy as np
import pytest

from showo2_jax.cli import main as cli
from showo2_jax import param_mapping
from showo2_jax.convert import pipeline, sources

from convert_helpers import assert_same_tensors, copy_fixture


def run_cli(capsys, *argv):
  rc = cli.main(["convert", *map(str, argv)])
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_cli_round_trip_and_verify(showo2_fixture_dir, tmp_path, capsys):
  ox, pt = tmp_path / "ox", tmp_path / "pt"
  rc, out, _ = run_cli(capsys, "to-orbax", "--torch", showo2_fixture_dir, "--out", ox)
  assert rc == 0 and "wrote showo2 checkpoint" in out and "109 tensors" in out
  rc, out, _ = run_cli(capsys, "to-torch", "--orbax", ox, "--out", pt, "--max-shard-size", "300KB")
  assert rc == 0 and "pytorch_model-00001-of-" in out
  assert_same_tensors(showo2_fixture_dir, pt)
  rc, out, _ = run_cli(capsys, "verify", "--torch", pt, "--orbax", ox)
  assert rc == 0 and "bit-exact: 110" in out and out.strip().endswith("OK: every tensor matches bit for bit")
  rc, _, err = run_cli(capsys, "to-orbax", "--torch", showo2_fixture_dir, "--out", ox)
  assert rc == 1 and "already exists" in err and "--overwrite" in err


def test_verify_reports_a_changed_tensor(showo2_fixture_dir, tmp_path, capsys):
  ox = tmp_path / "ox"
  pipeline.to_orbax(str(showo2_fixture_dir), str(ox))

  def nudge(t):
    t["fusion_proj.3.weight"][0, 0] += 1.0
    return t
  changed = copy_fixture(showo2_fixture_dir, tmp_path / "changed", transform=nudge)
  rc, out, _ = run_cli(capsys, "verify", "--torch", changed, "--orbax", ox)
  assert rc == 1 and "differing: 1" in out and "fusion_proj.3.weight 1" in out and "MISMATCH" in out


def test_missing_unexpected_and_wrong_shape_keys(showo2_fixture_dir, tmp_path, capsys):
  def damage(t):
    t["extra.weight"] = np.zeros(3, np.float32)
    t["time_embed_proj.bias"] = np.zeros(7, np.float32)
    return t
  bad = copy_fixture(showo2_fixture_dir, tmp_path / "bad", drop=["fusion_proj.1.bias"], transform=damage)
  with pytest.raises(param_mapping.KeyMismatchError) as e:
    pipeline.to_orbax(str(bad), str(tmp_path / "ox"))
  assert e.value.missing == ["fusion_proj.1.bias"] and e.value.unexpected == ["extra.weight"]
  assert "time_embed_proj.bias (7,) (expected (64,))" in e.value.wrong_shape[0]
  rc, _, err = run_cli(capsys, "to-orbax", "--torch", bad, "--out", tmp_path / "ox")
  assert rc == 1 and "missing (1): fusion_proj.1.bias" in err and "unexpected (1): extra.weight" in err
  assert not (tmp_path / "ox").exists()  # nothing half-written


def test_unknown_layout(tmp_path, capsys):
  copy_fixture_dir = tmp_path / "odd"
  copy_fixture_dir.mkdir()
  from showo2_jax.convert import checkpoint_io
  checkpoint_io.save_safetensors({"foo.weight": np.zeros(2, np.float32)}, str(copy_fixture_dir / "model.safetensors"))
  with pytest.raises(sources.UnknownLayoutError, match="unknown checkpoint layout"):
    sources.detect_kind(str(copy_fixture_dir))
  rc, _, err = run_cli(capsys, "to-orbax", "--torch", copy_fixture_dir, "--out", tmp_path / "ox")
  assert rc == 1 and "unknown checkpoint layout" in err and "foo.weight" in err
  rc, _, err = run_cli(capsys, "to-orbax", "--torch", tmp_path / "absent", "--out", tmp_path / "ox")
  assert rc == 1 and "no such file" in err
  rc, _, err = run_cli(capsys, "to-torch", "--orbax", copy_fixture_dir, "--out", tmp_path / "pt")
  assert rc == 1 and "not a showo2-jax param checkpoint" in err


def test_orbax_checkpoint_of_another_model(showo2_fixture_dir, tmp_path, capsys):
  """verify against the wrong model lists the mismatch instead of crashing."""
  ox = tmp_path / "ox"
  pipeline.to_orbax(str(showo2_fixture_dir), str(ox))
  other = copy_fixture(showo2_fixture_dir, tmp_path / "other", drop=["diff_proj.0.bias"])
  rc, out, _ = run_cli(capsys, "verify", "--torch", other, "--orbax", ox)
  assert rc == 1 and "missing in the PyTorch checkpoint (1): diff_proj.0.bias" in out


def test_sizes():
  assert pipeline.parse_size("5GB") == 5 * 10**9
  assert pipeline.parse_size("2GiB") == 2 * 2**30
  assert pipeline.parse_size("300KB") == 300_000
  assert pipeline.parse_size("1234") == 1234
  with pytest.raises(pipeline.ConversionError):
    pipeline.parse_size("lots")
