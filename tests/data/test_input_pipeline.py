"""Mixed Grain pipelines: batch composition, sharding, resume, bad data, workers, config."""
import json
import sys

import jax
import numpy as np
import pytest

from showo2_jax import config_lib
from showo2_jax.data import build, pipeline, sources, tasks, testing

R, L = 64, 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline_data")
  testing.write_image_text_dataset(root, 12)
  testing.write_llava_dataset(root, 6)
  return root


def streams(data_dir, tok, special, bs_t2i=3, bs_mmu=2):
  t2i = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L)
  mmu = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, captioning=True)
  return [pipeline.Stream("t2i", sources.image_text_source(data_dir / "data.jsonl"), t2i, bs_t2i),
          pipeline.Stream("mmu", sources.image_text_source(data_dir / "data.jsonl"), mmu, bs_mmu)]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_concatenate_stream_rows_in_order(data_dir, tok, special):
  ds = pipeline.mixed_batches(streams(data_dir, tok, special), seed=0)
  batch = next(iter(pipeline.make_loader(ds)))
  assert batch["text_tokens"].shape == (5, L) and batch["text_tokens"].dtype == np.int32
  assert batch["pixel_values"].shape == (5, 3, R, R) and batch["pixel_values"].dtype == np.float32
  assert batch["modality_positions"].shape == (5, 1, 2)
  assert batch["is_und"].tolist() == [False] * 3 + [True] * 2
  # t2i rows carry no labels, captioning rows do.
  assert (batch["text_labels"][:3] == -100).all() and (batch["text_labels"][3:] != -100).any()
  assert (batch["modality_positions"][3:, 0] == [2, 17]).all()


def test_resume_gives_exactly_the_next_batch(data_dir, tok, special):
  ds = pipeline.make_loader(pipeline.mixed_batches(streams(data_dir, tok, special), seed=3,
                                                   read_threads=2))
  it = iter(ds)
  for _ in range(5):  # 25 rows > 12 records: crosses an epoch boundary
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # checkpointable as JSON
  expected = [next(it) for _ in range(2)]
  it2 = iter(ds)
  it2.set_state(state)
  for want in expected:
    assert_batches_equal(next(it2), want)


def test_epochs_are_reshuffled_and_seeds_matter(data_dir, tok, special):
  def prompts(seed, n):
    it = iter(pipeline.make_loader(pipeline.mixed_batches(
        streams(data_dir, tok, special, bs_t2i=4, bs_mmu=4)[1:], seed=seed)))
    return [tuple(r) for b in (next(it) for _ in range(n)) for r in b["text_tokens"]]
  a = prompts(0, 6)  # 24 rows = 2 epochs of 12
  assert len(set(a[:12])) == 12 and set(a[:12]) == set(a[12:]) and a[:12] != a[12:]
  assert prompts(0, 3) == a[:12] and prompts(1, 3) != a[:12]


def test_hosts_read_disjoint_slices_of_one_global_sequence(data_dir, tok, special):
  def rows(index, count, bs, n):
    it = iter(pipeline.make_loader(pipeline.mixed_batches(
        streams(data_dir, tok, special, bs_mmu=bs)[1:], seed=0, shard_index=index, shard_count=count)))
    return [[tuple(r) for r in next(it)["text_tokens"]] for _ in range(n)]
  hosts = [rows(i, 3, 2, 2) for i in range(3)]
  sets = [{r for b in h for r in b} for h in hosts]
  assert all(len(s) == 4 for s in sets)  # 12 rows = one epoch of 12 records: all distinct
  assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
  # Step n of 3 hosts (in host order) is step n of one host reading the whole global batch.
  one = rows(0, 1, 6, 2)
  assert [hosts[0][n] + hosts[1][n] + hosts[2][n] for n in range(2)] == one
  with pytest.raises(ValueError, match="host 12 of 3 does not exist"):
    pipeline.mixed_batches(streams(data_dir, tok, special), seed=0, shard_index=12, shard_count=3)


def test_bad_images_are_replaced_and_counted(tmp_path, tok, special):
  path = testing.write_image_text_dataset(tmp_path, 6)
  (tmp_path / "images" / "00002.png").write_bytes(b"corrupt")
  (tmp_path / "images" / "00004.png").unlink()
  rs = np.random.default_rng(0)
  testing.random_image(rs, 10, 10).save(tmp_path / "images" / "00005.png")  # below min_res
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, min_res=(32, 32))
  good_task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L)
  records = sources.image_text_source(path)
  good = {tuple(good_task(records[i], np.random.default_rng(0))["text_tokens"]) for i in (0, 1, 3)}
  ds = pipeline.mixed_batches([pipeline.Stream("t2i", records, task, 3)], seed=0)
  it = iter(pipeline.make_loader(ds))
  batches = [next(it) for _ in range(4)]  # 12 positions = 2 epochs of 6 records, 3 of them bad
  assert all(b["text_tokens"].shape == (3, L) for b in batches)
  # Every row is one of the 3 good records (with its caption, or dropped by cond_dropout_prob).
  rows = {tuple(r) for b in batches for r in b["text_tokens"]}
  assert rows <= good | {tuple(r) for r in _dropped_caption_rows(good_task, records)}
  # 4 bad and 2 filtered positions in 2 epochs, each replaced at least once.
  assert it.skip_counts["num_bad"] >= 4 and it.skip_counts["num_filtered"] >= 2, it.skip_counts
  assert "num_bad" not in batches[0]


def _dropped_caption_rows(task, records):
  """Rows of the good records with the caption dropped (cond_dropout_prob 0.1)."""
  saved, task.cond_dropout_prob = task.cond_dropout_prob, 1.0
  try:
    return [task(records[i], np.random.default_rng(0))["text_tokens"] for i in (0, 1, 3)]
  finally:
    task.cond_dropout_prob = saved


def test_bad_records_are_skipped_and_counted_with_file_and_line(tmp_path, tok, special, caplog):
  """Non-UTF-8 bytes and wrong types in annotation fields: counted skips, not a
  refused dataset or a crashed worker; the log names file and line."""
  path = testing.write_image_text_dataset(tmp_path, 4)
  lines = open(path, "rb").read().splitlines()
  lines[1] = lines[1].replace(b"The image", b"The \xff image")  # not UTF-8
  lines[2] = b'{"path": "images/00002.png", "prompt": ["a", "list"]}'
  open(path, "wb").write(b"\n".join(lines) + b"\n")
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L)
  ds = pipeline.mixed_batches([pipeline.Stream("t2i", sources.image_text_source(path), task, 2)],
                              seed=0)
  for workers in (0, 1):  # also through a Grain worker process
    it = iter(pipeline.make_loader(ds, num_workers=workers))
    batches = [next(it) for _ in range(2)]  # 4 rows from 2 good records per epoch: 2 epochs
    assert all(b["text_tokens"].shape == (2, L) for b in batches)
    # Both bad records of the first epoch at least (a skip is counted with the next kept row).
    assert it.skip_counts["num_bad"] >= 2 and it.skip_counts["num_filtered"] == 0
    if workers:
      it.close()
  assert f"{path}:2: not UTF-8" in caplog.text and f"{path}:3: 'prompt' must be a string" in caplog.text


@pytest.mark.multiprocess
@pytest.mark.slow
def test_worker_processes_resume_exactly(data_dir, tok, special):
  ds = pipeline.make_loader(pipeline.mixed_batches(streams(data_dir, tok, special), seed=0),
                            num_workers=2)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(2)]
  it.close()
  it2 = iter(ds)
  it2.set_state(state)
  for want in expected:
    assert_batches_equal(next(it2), want)
  it2.close()


def test_global_batch_shards_rows_over_the_mesh(data_dir, tok, special):
  batch = next(iter(pipeline.make_loader(pipeline.mixed_batches(
      streams(data_dir, tok, special, bs_t2i=1, bs_mmu=1), seed=0))))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  arrays = pipeline.global_batch(batch, mesh)
  assert arrays["pixel_values"].shape == batch["pixel_values"].shape
  assert arrays["text_tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(arrays["text_tokens"]), batch["text_tokens"])


def test_pipeline_from_stage_configs(data_dir, tok, special):
  sys.path.insert(0, str(config_lib.CONFIG_DIR.parent))
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  cfg = data_configs.stage2(str(data_dir / "data.jsonl"), str(data_dir / "llava.json"),
                            batch_size_t2i=2, batch_size_mmu=2, min_res=(32, 32))
  batch = next(iter(build.pipeline_from_config(cfg, tok, special, resolution=R, max_seq_len=128,
                                               process_index=0, process_count=1)))
  assert batch["is_und"].tolist() == [False, False, True, True]
  assert batch["text_tokens"].shape == (4, 128)
  cfg = data_configs.stage1(str(data_dir / "data.jsonl"), str(data_dir / "data.jsonl"),
                            batch_size_t2i=3, batch_size_mmu=1, min_res=(64, 80))
  cfg.streams.t2i.cond_dropout_prob = 1.0
  batch = next(iter(build.pipeline_from_config(cfg, tok, special, resolution=R, max_seq_len=L,
                                               process_index=0, process_count=1)))
  assert (batch["modality_positions"][:3, 0] == [2, 17]).all()  # every caption dropped
  cfg.streams.mmu.min_res = (65, 80)  # every image filtered: fail, do not hang
  cfg.max_consecutive_skips = 30
  with pytest.raises(sources.EmptyDatasetError, match="'mmu': 30 samples in a row were skipped"):
    next(iter(build.pipeline_from_config(cfg, tok, special, resolution=R, max_seq_len=L,
                                         process_index=0, process_count=1)))
  cfg.streams.t2i.task = "nope"
  with pytest.raises(ValueError, match="unknown task"):
    build.pipeline_from_config(cfg, tok, special, resolution=R, max_seq_len=L,
                               process_index=0, process_count=1)


def test_mixed_streams_must_agree_on_fields():
  a = {"text_tokens": np.zeros((1, 4)), "pixel_values": np.zeros((1, 1, 3, 2, 2))}
  b = {"text_tokens": np.zeros((1, 4)), "latents": np.zeros((1, 1, 16, 1, 1))}
  with pytest.raises(ValueError, match="different fields"):
    pipeline.concat_batches([a, b])
  out = pipeline.concat_batches([a, a])
  assert out["pixel_values"].shape == (2, 3, 2, 2)


def test_posterior_mean_stream_beside_a_sampled_one():
  """A --deterministic stream (no latents_logvar) mixes with a sampled one: its rows
  get the clamp floor's logvar, so the step's posterior sample is its stored mean."""
  import jax
  from showo2_jax.vae import wan
  rng = np.random.default_rng(0)
  sampled = {"text_tokens": np.zeros((2, 4)), "latents": rng.normal(size=(2, 1, 8, 1, 2, 2)),
             "latents_logvar": np.zeros((2, 1, 8, 1, 2, 2), np.float32)}
  mean = {"text_tokens": np.zeros((3, 4)), "latents": rng.normal(size=(3, 1, 8, 1, 2, 2))}
  out = pipeline.concat_batches([sampled, mean])
  assert out["latents_logvar"].shape == out["latents"].shape == (5, 8, 1, 2, 2)
  np.testing.assert_array_equal(out["latents_logvar"][:2], 0.0)
  np.testing.assert_array_equal(out["latents_logvar"][2:], pipeline.MEAN_LOGVAR)
  z = np.asarray(wan.sample_posterior(out["latents"], out["latents_logvar"], jax.random.PRNGKey(0)))
  np.testing.assert_allclose(z[2:], out["latents"][2:], atol=2e-6)
  assert np.abs(z[:2] - out["latents"][:2]).mean() > 0.3     # std 1 there: really sampled
  # Without a sampled stream nothing is added.
  assert "latents_logvar" not in pipeline.concat_batches([mean, mean])
