"""TFDS builder: a folder -> ArrayRecord shards -> tfds.data_source -> the same rows."""
import numpy as np
import pytest

from showo2_jax.data import build, pipeline, sources, tasks, testing


@pytest.fixture(name="tfds_builder")
def _tfds_builder():
  """showo2_jax.data.tfds_builder, imported by the tests that use it rather than at
  collection (it imports tensorflow_datasets, a required dependency)."""
  from showo2_jax.data import tfds_builder  # pylint: disable=import-outside-toplevel
  return tfds_builder

R = 64


def test_image_text_round_trip_gives_identical_rows(tmp_path, tok, special, tfds_builder):
  jsonl = testing.write_image_text_dataset(tmp_path, 5)
  rgba = np.random.default_rng(0).integers(0, 256, (64, 80, 4), np.uint8)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(rgba, "RGBA").save(tmp_path / "images" / "00003.png")  # mode handled at train time
  data_dir = tfds_builder.build_array_record_dataset(jsonl, str(tmp_path / "tfds"), num_shards=2)
  assert len(list((tmp_path / "tfds").rglob("*.array_record*"))) == 2
  from_tfds = tfds_builder.tfds_source(data_dir)
  from_files = sources.image_text_source(jsonl)
  assert len(from_tfds) == 5 and "image_bytes" in from_tfds[0] and "path" not in from_tfds[0]
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=64, cond_dropout_prob=0.0)
  files = {r["prompt"]: r for r in (from_files[i] for i in range(len(from_files)))}
  for i in range(5):
    rec = from_tfds[i]
    a, b = task(rec, np.random.default_rng(0)), task(files[rec["prompt"]], np.random.default_rng(0))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_llava_records_and_text_only_samples(tmp_path, tok, special, tfds_builder):
  data_dir = tfds_builder.build_array_record_dataset(testing.write_llava_dataset(tmp_path, 3),
                                                     str(tmp_path / "tfds"))
  ds = tfds_builder.tfds_source(data_dir)
  recs = sorted((ds[i] for i in range(3)), key=lambda r: r["id"])
  assert "image_bytes" in recs[0] and "image_bytes" not in recs[2]
  task = tasks.LlavaTask(tok, special, resolution=R, max_seq_len=128)
  assert task(recs[2], np.random.default_rng(0))["modality_positions"].tolist() == [[0, 0]]
  assert task(recs[0], np.random.default_rng(0))["modality_positions"][0, 1] == 17


def test_stage_config_reads_tfds(tmp_path, tok, special, tfds_builder):
  import sys  # pylint: disable=import-outside-toplevel
  from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(config_lib.CONFIG_DIR.parent))
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  data_dir = tfds_builder.build_array_record_dataset(testing.write_image_text_dataset(tmp_path, 4),
                                                     str(tmp_path / "tfds"))
  cfg = data_configs.stage1(data_dir, data_dir, batch_size_t2i=2, batch_size_mmu=2, min_res=())
  cfg.streams.t2i.source = cfg.streams.mmu.source = "tfds"
  batch = next(iter(build.pipeline_from_config(cfg, tok, special, resolution=R, max_seq_len=64,
                                               process_index=0, process_count=1)))
  assert batch["pixel_values"].shape == (4, 3, R, R)
  assert pipeline.SKIP_KEYS[0] not in batch


def test_empty_or_missing_dataset_fails(tmp_path, tfds_builder):
  with pytest.raises(FileNotFoundError, match="no showo2_records dataset"):
    tfds_builder.tfds_source(str(tmp_path / "nothing"))
