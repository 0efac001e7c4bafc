"""Annotation sources: records, path resolution, and failing fast on bad files."""
import concurrent.futures
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


def test_bad_jsonl_lines_become_counted_skips_naming_file_and_line(tmp_path, caplog):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"path": "a.png", "prompt": "x"}\n\n{"path": "b.png", "prompt": \n'
                   b'{"path": "c.png", "prompt": "caf\xe9"}\n'      # latin-1, not UTF-8
                   b'{"path": "d.png", "prompt": 5}\n'                # wrong type
                   b'{"path": "e.png"}\n'                             # missing key
                   b'["f.png", "x"]\n')                                # not an object
  ds = sources.image_text_source(path)
  assert len(ds) == 6 and not sources.is_bad(ds[0])
  reasons = [ds[i][sources.BAD] for i in range(1, 6)]
  assert reasons[0].startswith(f"{path}:3: invalid JSON")
  assert reasons[1].startswith(f"{path}:4: not UTF-8 (byte 0xe9")
  assert reasons[2].startswith(f"{path}:5: 'prompt' must be a string, got int")
  assert reasons[3] == f"{path}:6: missing keys ['prompt']"
  assert reasons[4].startswith(f"{path}:7: expected a JSON object")
  assert "5 of 6 records are bad" in caplog.text
  # Every record bad: nothing to train on, fail fast.
  (tmp_path / "all_bad.jsonl").write_bytes(b'{"path": 1, "prompt": "x"}\n')
  with pytest.raises(sources.DataFormatError, match=r"none of its 1 records is usable.*all_bad\.jsonl:1"):
    sources.image_text_source(tmp_path / "all_bad.jsonl")


def test_bad_llava_and_vist_records_name_the_record(tmp_path):
  good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
  (tmp_path / "l.json").write_text(json.dumps([good, {"conversations": "hi"},
                                               {**good, "image": [1, 2]},
                                               {**good, "image": ["a", "b"]}]))
  ds = sources.llava_source(tmp_path / "l.json")
  assert ds[1][sources.BAD].startswith(f"{tmp_path / 'l.json'}: record 1: 'conversations' must be")
  assert ds[2][sources.BAD].startswith(f"{tmp_path / 'l.json'}: record 2: 'image' must be a string")
  assert ds[3]["image"] == [str(tmp_path / "a"), str(tmp_path / "b")]  # multi-image: fine
  (tmp_path / "v.json").write_text(json.dumps([{"images": ["a"], "captions": ["x"]},
                                               {"images": ["a"], "captions": []}]))
  ds = sources.vist_source(tmp_path / "v.json")
  assert ds[1][sources.BAD].endswith("record 1: 1 images but 0 captions")


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
    sources.vist_source(tmp_path / "bad.json")  # its only record is bad


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


def test_records_decode_from_many_threads_at_once():
  # Grain's reader threads decode concurrently; each must get its own record back
  # (decode_record serialises numpy's header parsing: CPython 3.11 gh-106905).
  encoded = [record_io.encode_record({"latents": np.full((2, 3), i, np.float32), "prompt": f"p{i}"})
             for i in range(32)]
  def decode_all(_):
    return [record_io.decode_record(e) for e in encoded for _ in range(5)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(decode_all, range(8)))
  for got in results:
    assert [r["prompt"] for r in got[::5]] == [f"p{i}" for i in range(32)]
    assert all(float(r["latents"][0, 0]) == int(r["prompt"][1:]) for r in got)
