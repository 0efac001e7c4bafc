"""Annotation files and images in a bucket (GCS emulator) give the batches their
local copy gives."""
import numpy as np

from showo2_jax import paths
from showo2_jax.data import pipeline, sources, tasks, testing

R, L = 32, 48


def _first_batch(annotation, tok, special):
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L)
  stream = pipeline.Stream("t2i", sources.image_text_source(annotation), task, 2)
  return next(iter(pipeline.make_loader(pipeline.mixed_batches([stream], seed=1, read_threads=1))))


def test_image_text_files_in_a_bucket(gcs_bucket, tmp_path, tok, special):
  local = tmp_path / "data"
  testing.write_image_text_dataset(local, 3)
  remote = gcs_bucket + "/data"
  paths.copy_from_local(local, remote)
  assert paths.exists(remote + "/data.jsonl") and paths.glob(remote + "/images/*.png")

  want = _first_batch(local / "data.jsonl", tok, special)
  got = _first_batch(remote + "/data.jsonl", tok, special)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert sources.image_text_source(remote + "/data.jsonl")[0]["path"].startswith(remote + "/")
