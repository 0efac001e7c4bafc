"""Damaged or inconsistent checkpoints are refused (or warned about) naming the file
and the tensor; `to-orbax --overwrite` keeps the old output until the new one is done."""
import json
import logging
import os
import shutil
import struct

import numpy as np
import pytest

from showo2_jax.cli import main as cli
from showo2_jax.convert import checkpoint_io, orbax_io, pipeline
from showo2_jax.convert.showo2_torch import load_original

from convert_helpers import copy_fixture


def _rewrite_header(path, edit):
  """Rewrites a safetensors file's JSON header with `edit(header)`, data unchanged."""
  raw = open(path, "rb").read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])
  edit(header)
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _same_size_pair(header):
  by_size = {}
  for k, v in header.items():
    if k != "__metadata__":
      size = v["data_offsets"][1] - v["data_offsets"][0]
      if size in by_size:
        return by_size[size], k
      by_size[size] = k
  raise AssertionError("no two tensors of one size")


def test_aliased_offsets_are_refused_naming_file_and_tensor(showo2_fixture_dir, tmp_path, capsys):
  src = copy_fixture(showo2_fixture_dir, tmp_path / "aliased")
  weights = src / "model.safetensors"
  aliased = {}

  def alias(header):
    first, second = _same_size_pair(header)
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    aliased["keys"] = (first, second)
  _rewrite_header(weights, alias)
  with pytest.raises(checkpoint_io.CheckpointFormatError) as e:
    checkpoint_io.StateDict(str(src))
  assert str(weights) in str(e.value) and "invalid offset for tensor" in str(e.value)
  assert any(k in str(e.value) for k in aliased["keys"])
  pipeline.to_orbax(str(showo2_fixture_dir), str(tmp_path / "good"))
  for argv in (["to-orbax", "--torch", src, "--out", tmp_path / "ox"],
               ["verify", "--torch", src, "--orbax", tmp_path / "good"]):
    rc = cli.main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 1 and "bit for bit" not in out
    assert "not a valid safetensors file" in err and "invalid offset" in err and "Traceback" not in err


def test_truncated_file_and_unknown_dtype_name_the_file(showo2_fixture_dir, tmp_path):
  src = copy_fixture(showo2_fixture_dir, tmp_path / "cut")
  weights = src / "model.safetensors"
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) - 100)
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="model.safetensors: not a valid"):
    checkpoint_io.StateDict(str(src))
  # A dtype the library knows but we cannot hold as numpy names file, tensor and dtype.
  path = tmp_path / "f4.safetensors"
  checkpoint_io.save_safetensors({"w": np.zeros(4, np.uint8)}, str(path))
  _rewrite_header(path, lambda h: h["w"].update(dtype="F8_E8M0", shape=[4]))
  with checkpoint_io.StateDict(str(path)) as sd:
    with pytest.raises(checkpoint_io.CheckpointFormatError, match=r"f4.safetensors: tensor 'w' has dtype F8_E8M0"):
      sd.dtype("w")
    with pytest.raises(checkpoint_io.CheckpointFormatError, match=r"no tensor named 'nope'"):
      sd["nope"]


def test_float8_tensors_are_read(tmp_path):
  import ml_dtypes
  path = tmp_path / "f8.safetensors"
  x = np.linspace(-2, 2, 8).astype(ml_dtypes.float8_e4m3fn)
  checkpoint_io.save_safetensors({"w": x}, str(path))
  with checkpoint_io.StateDict(str(path)) as sd:
    np.testing.assert_array_equal(sd["w"], x)


def test_tied_head_that_differs_from_the_embeddings_warns(showo2_fixture_dir, tmp_path, caplog):
  def untie(t):
    t["showo.lm_head.weight"] = t["showo.lm_head.weight"] + 1.0
    return t
  src = copy_fixture(showo2_fixture_dir, tmp_path / "src", transform=untie)
  with caplog.at_level(logging.WARNING):
    _, params = load_original(str(src))
  msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "showo.lm_head.weight differs from showo.model.embed_tokens.weight" in msg
  assert "uses showo.model.embed_tokens.weight" in msg
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    load_original(str(showo2_fixture_dir))  # a true copy: no warning
  assert not [r for r in caplog.records if "differs" in r.getMessage()]


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(
    showo2_fixture_dir, tmp_path, capsys):
  ox = tmp_path / "ox"
  pipeline.to_orbax(str(showo2_fixture_dir), str(ox))
  before = sorted(os.listdir(ox))
  src = copy_fixture(showo2_fixture_dir, tmp_path / "cut")
  weights = src / "model.safetensors"
  # Damage a tensor's bytes so the source fails part-way through (its header stays valid).
  with checkpoint_io.StateDict(str(src)) as sd:
    keys = sd.keys()
  os.remove(weights)
  shutil.copy(showo2_fixture_dir / "model.safetensors", weights)
  _rewrite_header(weights, lambda h: h[keys[-1]].update(dtype="F8_E8M0",
                                                        shape=[int(np.prod(h[keys[-1]]["shape"])) * 4]))
  rc = cli.main(["convert", "to-orbax", "--torch", str(src), "--out", str(ox), "--overwrite"])
  assert rc == 1 and "Traceback" not in capsys.readouterr().err
  assert sorted(os.listdir(ox)) == before
  orbax_io.restore_params(str(ox))  # the old checkpoint still loads
  assert not [p for p in os.listdir(tmp_path) if p.startswith("ox.")]  # no leftovers
  # And a good source replaces it.
  assert cli.main(["convert", "to-orbax", "--torch", str(showo2_fixture_dir), "--out", str(ox),
                   "--overwrite"]) == 0
  orbax_io.restore_params(str(ox))
  assert not [p for p in os.listdir(tmp_path) if p.startswith("ox.")]
