"""Annotation sources: records, path resolution, and failing fast on bad files."""
import json
import os

import numpy as np
import pytest

from showo2_jax.data import record_io, sources, testing


def test_image_text_source_resolves_paths(tmp_path):
  path = testing.write_image_text_dataset(tmp_path, 3)
  ds = sources.image_text_source(path)
  assert len(ds) == 3
  assert ds[1]["path"] == os.path.join(str(tmp_path), "images", "00001.png")
  assert os.path.exists(ds[1]["path"]) and ds[1]["prompt"].startswith("The image features")
  other = sources.image_text_source(path, media_root="/elsewhere")
  assert other[0]["path"] == "/elsewhere/images/00000.png"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"path": "a.png", "prompt": "x"}\n\n{"path": "b.png", "prompt": \n')
  with pytest.raises(sources.DataFormatError, match=r"bad\.jsonl:3: invalid JSON"):
    sources.image_text_source(path)


def test_record_missing_keys_is_an_error(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"path": "a.png"}\n')
  with pytest.raises(sources.DataFormatError, match=r"d\.jsonl:1: missing keys \['prompt'\]"):
    sources.image_text_source(path)
  path.write_text('["a.png", "x"]\n')
  with pytest.raises(sources.DataFormatError, match="expected a JSON object"):
    sources.image_text_source(path)


def test_empty_and_missing_datasets_fail_fast(tmp_path):
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(sources.EmptyDatasetError, match="empty"):
    sources.image_text_source(tmp_path / "empty.jsonl")
  (tmp_path / "empty.json").write_text("[]")
  with pytest.raises(sources.EmptyDatasetError):
    sources.llava_source(tmp_path / "empty.json")
  with pytest.raises(FileNotFoundError, match="dataset file not found"):
    sources.image_text_source(tmp_path / "missing.jsonl")


def test_llava_source(tmp_path):
  ds = sources.llava_source(testing.write_llava_dataset(tmp_path, 3))
  assert ds[0]["image"] == os.path.join(str(tmp_path), "images", "llava_00000.png")
  assert "image" not in ds[2] and ds[2]["conversations"][0]["from"] == "human"
  (tmp_path / "obj.json").write_text(json.dumps({"a": 1}))
  with pytest.raises(sources.DataFormatError, match="expected a JSON list"):
    sources.llava_source(tmp_path / "obj.json")


def test_vist_source_appends_jpg_and_checks_lengths(tmp_path):
  ds = sources.vist_source(testing.write_vist_dataset(tmp_path, 2))
  assert len(ds[0]["images"]) == 5 and all(p.endswith(".jpg") for p in ds[0]["images"])
  assert all(os.path.exists(p) for p in ds[1]["images"])
  (tmp_path / "bad.json").write_text(json.dumps([{"images": ["a"], "captions": []}]))
  with pytest.raises(sources.DataFormatError, match="record 0: 1 images but 0 captions"):
    sources.vist_source(tmp_path / "bad.json")


def test_array_record_round_trip(tmp_path):
  records = [{"prompt": "a cat", "image_bytes": b"\x00\x01binary",
              "latents": np.ones((1, 4, 2, 2), np.float32),
              "conversations": [{"from": "human", "value": "<image>"}]},
             {"prompt": "b", "latents": np.zeros((2, 4, 2, 2), np.float32)}]
  path = tmp_path / "x.array_record"
  assert record_io.write_array_record(path, records) == 2
  ds = sources.array_record_source(str(path))
  assert len(ds) == 2
  got = ds[0]
  assert got["prompt"] == "a cat" and got["image_bytes"] == b"\x00\x01binary"
  assert got["conversations"] == records[0]["conversations"]
  np.testing.assert_array_equal(got["latents"], records[0]["latents"])
  assert ds[1]["latents"].shape == (2, 4, 2, 2)
  with pytest.raises(FileNotFoundError):
    sources.array_record_source(str(tmp_path / "none.array_record"))
