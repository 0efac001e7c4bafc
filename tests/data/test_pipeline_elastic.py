"""Elastic resume of the mixed pipeline: a state saved under one number of worker
processes or hosts continues under another at the same global sample, none
repeated or skipped (compared row by row with an uninterrupted run)."""
import json

import grain
import numpy as np
import pytest

from showo2_jax.data import pipeline, sources, tasks, testing

R, L = 32, 48


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("elastic_data")
  return sources.image_text_source(testing.write_image_text_dataset(root, 7))


def _streams(records, tok, special, bs_t2i, bs_mmu):
  t2i = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L)
  mmu = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, captioning=True)
  return [pipeline.Stream("t2i", records, t2i, bs_t2i), pipeline.Stream("mmu", records, mmu, bs_mmu)]


def _loader(records, tok, special, *, hosts=1, host=0, rows=(2, 1), workers=0):
  """Host `host` of `hosts`, each reading (t2i, mmu) = `rows` per step (per host)."""
  return pipeline.make_loader(pipeline.mixed_batches(
      _streams(records, tok, special, *rows), seed=5, shard_index=host, shard_count=hosts,
      read_threads=1), num_workers=workers)


def _ids(batch, bs_t2i):
  """(t2i rows, mmu rows) of a batch, each row as bytes of its tokens and pixels."""
  rows = [batch["text_tokens"][i].tobytes() + batch["pixel_values"][i].tobytes()
          for i in range(len(batch["text_tokens"]))]
  return rows[:bs_t2i], rows[bs_t2i:]


def _global_steps(host_batches, bs_t2i):
  """Per step: (t2i rows of all hosts in host order, mmu rows likewise)."""
  out = []
  for step in zip(*host_batches):
    parts = [_ids(b, bs_t2i) for b in step]
    out.append((sum((p[0] for p in parts), []), sum((p[1] for p in parts), [])))
  return out


def _read(it, n):
  return [next(it) for _ in range(n)]


def _state(it):
  return json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it


@pytest.mark.multiprocess
@pytest.mark.slow
def test_another_worker_count_continues_at_the_same_sample(records, tok, special):
  ref_it = iter(_loader(records, tok, special))
  ref = _read(ref_it, 5)   # 10 t2i rows of 7 records: crosses an epoch
  for before, after in ((0, 2), (2, 0)):
    it = iter(_loader(records, tok, special, workers=before))
    first = _read(it, 3)
    state = _state(it)
    it.close()
    it2 = iter(_loader(records, tok, special, workers=after))
    it2.set_state(state)
    rest = _read(it2, 2)
    it2.close()
    for got, want in zip(first + rest, ref):
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{before}->{after} workers: {k}")


@pytest.mark.parametrize("hosts_before,hosts_after", [(2, 1), (1, 3)])
def test_another_host_count_continues_at_the_same_sample(records, tok, special, hosts_before,
                                                         hosts_after):
  """The global batch stays (t2i 6, mmu 6 rows a step); per-host rows scale with the hosts."""
  g_t2i, g_mmu = 6, 6
  ref = _global_steps([_read(iter(_loader(records, tok, special, rows=(g_t2i, g_mmu))), 5)], g_t2i)

  def hosts(n):
    return [iter(_loader(records, tok, special, hosts=n, host=h, rows=(g_t2i // n, g_mmu // n)))
            for h in range(n)]

  before = hosts(hosts_before)
  first = _global_steps([_read(it, 2) for it in before], g_t2i // hosts_before)
  states = [_state(it) for it in before]
  assert all(s["positions"] == states[0]["positions"] for s in states)   # global, not per host
  assert states[0]["positions"] == {"t2i": 2 * g_t2i, "mmu": 2 * g_mmu}
  after = hosts(hosts_after)
  for it in after:
    it.set_state(states[0])
  rest = _global_steps([_read(it, 3) for it in after], g_t2i // hosts_after)
  assert first + rest == ref
  every = [r for step in ref for r in step[0]]
  assert len(set(every[:7])) == 7   # one epoch: 7 distinct samples, none repeated


def test_an_older_per_host_state_is_refused_in_one_line(records, tok, special):
  it = iter(_loader(records, tok, special))
  with pytest.raises(pipeline.DataStateError) as e:
    it.set_state({"parent": {"next_index": 3}, "skip_counts": {"num_bad": 0, "num_filtered": 0}})
  assert "\n" not in str(e.value) and "--config.init.from_checkpoint=" in str(e.value)


def test_grain_checkpoint_check_over_a_2_host_mixed_pipeline(records, tok, special):
  """Grain's own check (every state restores to the same remaining elements) on host 1
  of 2, through an epoch boundary (4 steps x 4 t2i rows over 7 records)."""
  loader = _loader(records, tok, special, hosts=2, host=1, rows=(2, 1))
  grain.experimental.assert_equal_output_after_checkpoint(
      grain.experimental.LimitIterDataset(loader, count=4))
