"""Latent precomputation: shards, resume, process split, and training on the result."""
import glob
import os

import numpy as np
import pytest

from showo2_jax.cli import main as cli_main
from showo2_jax.data import pipeline, precompute, sources, tasks, testing
from showo2_jax.train import latents as latents_lib

R = 64


def stub_encoder(calls=None):
  """pixels -> (mean-pooled) latents plus a logvar, recording each call's batch size."""
  def encode(pixels):
    if calls is not None:
      calls.append(len(pixels))
    latents = latents_lib.pool_encoder(pixels)
    return {"latents": latents, "latents_logvar": -latents}
  return encode


def image_records(tmp_path, n=10):
  return precompute.with_pixels(
      sources.image_text_source(testing.write_image_text_dataset(tmp_path, n)),
      tasks.pixel_loader("image_text", R))


def test_writes_latents_and_keeps_the_record(tmp_path):
  calls = []
  out = str(tmp_path / "lat")
  result = precompute.precompute_latents(image_records(tmp_path), stub_encoder(calls), out,
                                         batch_size=4, records_per_shard=4, process_index=0,
                                         process_count=1, progress=False)
  assert len(result.shards_written) == 3 and result.num_records == 10 and result.num_skipped == 0
  assert set(calls) == {4}  # fixed shape for a jitted encoder
  ds = sources.array_record_source(sorted(glob.glob(os.path.join(out, "*.array_record"))))
  assert len(ds) == 10
  rec = ds[3]
  assert rec["prompt"] == "The image features a cat number 3.\n"
  assert rec["latents"].shape == (1, 16, 8, 8) and rec["latents_logvar"].shape == (1, 16, 8, 8)
  pixels = tasks.pixel_loader("image_text", R)({"path": rec["path"]})
  np.testing.assert_allclose(rec["latents"], latents_lib.pool_encoder(pixels), atol=1e-6)


def test_rerun_skips_finished_shards(tmp_path):
  out = str(tmp_path / "lat")
  records = image_records(tmp_path)
  kw = dict(batch_size=4, records_per_shard=4, process_index=0, process_count=1, progress=False)
  first = precompute.precompute_latents(records, stub_encoder(), out, **kw)
  os.remove(first.shards_written[1])
  mtime = os.path.getmtime(first.shards_written[0])
  again = precompute.precompute_latents(records, stub_encoder(), out, **kw)
  assert again.shards_written == [first.shards_written[1]] and again.num_records == 3
  assert len(again.shards_skipped) == 2 and os.path.getmtime(first.shards_written[0]) == mtime


def test_processes_write_disjoint_shards(tmp_path):
  records = image_records(tmp_path)
  results = [precompute.precompute_latents(records, stub_encoder(), str(tmp_path / "lat"),
                                           num_shards=3, process_index=p, process_count=2,
                                           progress=False) for p in range(2)]
  assert [len(r.shards_written) for r in results] == [2, 1]
  assert sum(r.num_records for r in results) == 10


def test_bad_images_are_skipped(tmp_path):
  records = image_records(tmp_path, 5)
  (tmp_path / "images" / "00001.png").write_bytes(b"broken")
  result = precompute.precompute_latents(records, stub_encoder(), str(tmp_path / "lat"),
                                         process_index=0, process_count=1, progress=False)
  assert result.num_records == 4 and result.num_skipped == 1


def test_encoder_output_is_checked(tmp_path):
  with pytest.raises(ValueError, match="must return latents"):
    precompute.precompute_latents(image_records(tmp_path, 2), lambda x: {"z": x}, str(tmp_path / "o"),
                                  process_index=0, process_count=1, progress=False)


def test_training_pipeline_reads_latents(tmp_path, tok, special):
  out = str(tmp_path / "lat")
  precompute.precompute_latents(image_records(tmp_path), stub_encoder(), out, process_index=0,
                                process_count=1, progress=False)
  records = sources.array_record_source(glob.glob(os.path.join(out, "*.array_record")))
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=64)
  ds = pipeline.mixed_batches([pipeline.Stream("t2i", records, task, 4)], seed=0)
  batch = next(iter(pipeline.make_loader(ds)))
  assert "pixel_values" not in batch
  assert batch["latents"].shape == batch["latents_logvar"].shape == (4, 16, 8, 8)
  assert batch["text_tokens"].shape == (4, 64)


def test_vist_latents_cover_every_image(tmp_path, tok, special):
  records = precompute.with_pixels(sources.vist_source(testing.write_vist_dataset(tmp_path, 2)),
                                   tasks.pixel_loader("vist", R))
  out = str(tmp_path / "lat")
  precompute.precompute_latents(records, stub_encoder(), out, batch_size=4, process_index=0,
                                process_count=1, progress=False)
  ds = sources.array_record_source(glob.glob(os.path.join(out, "*.array_record")))
  assert sorted(len(ds[i]["latents"]) for i in range(2)) == [2, 5]
  row = tasks.VistTask(tok, special, resolution=R, max_seq_len=256)(ds[0], np.random.default_rng(0))
  assert row["latents"].shape == (4, 16, 8, 8)


def test_cli_with_the_pool_encoder(tmp_path, capsys):
  data = testing.write_image_text_dataset(tmp_path, 5)
  argv = ["precompute-latents", "--config", "tiny", "--kind", "image_text", "--data", data,
          "--out", str(tmp_path / "lat"), "--encoder", "pool", "--records-per-shard", "2",
          "--no-progress", "--process-index", "0", "--process-count", "1"]
  assert cli_main.main(argv) == 0
  assert "wrote 5 records to 3 shards" in capsys.readouterr().out
  assert cli_main.main(argv) == 0
  assert "wrote 0 records to 0 shards" in capsys.readouterr().out
  bad = ["precompute-latents", "--kind", "image_text", "--data", str(tmp_path / "none.jsonl"),
         "--out", str(tmp_path / "x"), "--encoder", "pool"]
  assert cli_main.main(bad) == 1
  assert "dataset file not found" in capsys.readouterr().err


def test_cli_refuses_a_silent_random_vae(tmp_path, capsys):
  data = testing.write_image_text_dataset(tmp_path, 2)
  argv = ["precompute-latents", "--config", "tiny", "--kind", "image_text", "--data", data,
          "--out", str(tmp_path / "lat"), "--no-progress"]
  assert cli_main.main(argv) == 1
  err = capsys.readouterr().err
  assert "--vae-weights is required" in err and "--random-vae" in err and "Traceback" not in err
  assert not (tmp_path / "lat").exists()
  assert cli_main.main(argv + ["--vae-weights", str(tmp_path / "nope.pth")]) == 1
  assert "--vae-weights: " in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_the_tiny_wan_vae(tmp_path):
  pytest.importorskip("showo2_jax.vae.wan")
  data = testing.write_image_text_dataset(tmp_path, 2)
  argv = ["precompute-latents", "--config", "tiny", "--kind", "image_text", "--data", data,
          "--out", str(tmp_path / "lat"), "--batch-size", "2", "--no-progress",
          "--process-index", "0", "--process-count", "1", "--random-vae"]
  assert cli_main.main(argv) == 0
  rec = sources.array_record_source(glob.glob(str(tmp_path / "lat" / "*.array_record")))[0]
  assert rec["latents"].shape == (1, 16, 8, 8) and np.isfinite(rec["latents"]).all()
  assert "latents_logvar" in rec
