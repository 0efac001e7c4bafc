"""`showo2-jax eval geneval / dpg`: the benchmark folder layouts, read back; resume; shards."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from showo2_jax.sample import benchmarks, pipeline

FEW = pipeline.FlowSampling(num_steps=3, guidance_scale=3.0)
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "cup", "count": 1}],
     "prompt": "a photo of a cat and a cup"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
]


def read_geneval_folder(out):
  """What GenEval's evaluate_images.py reads: per folder, the metadata and the samples."""
  folders = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
  got = {}
  for d in folders:
    with open(os.path.join(out, d, "metadata.jsonl")) as f:
      meta = json.loads(f.readline())
    samples = sorted(os.listdir(os.path.join(out, d, "samples")))
    got[d] = (meta, [np.asarray(Image.open(os.path.join(out, d, "samples", s))) for s in samples],
              samples)
  return got


@pytest.mark.slow
def test_geneval_layout_shards_resume_and_seeds(pipe, tmp_path):
  meta = tmp_path / "evaluation_metadata.jsonl"
  meta.write_text("".join(json.dumps(l) + "\n" for l in GENEVAL_LINES))
  rewritten = tmp_path / "rewritten.jsonl"
  rewritten.write_text("".join(json.dumps({**l, "prompt": l["prompt"] + ", high quality"}) + "\n"
                               for l in GENEVAL_LINES))
  items = benchmarks.read_geneval(str(meta), str(rewritten))
  assert items[1].prompt == "a photo of a cat and a cup, high quality"
  assert json.loads(items[1].metadata) == GENEVAL_LINES[1]  # the folder keeps the original
  out = str(tmp_path / "geneval")
  kw = dict(sampling=FEW, samples=2, seed=7, show_progress=False)
  # Two hosts, the second with a batch size that mixes prompts in one batch.
  shards = [benchmarks.shard(items, 2, h) for h in range(2)]
  assert [len(s) for s in shards] == [2, 1]
  assert benchmarks.write_geneval(pipe, shards[0], out, batch_size=2, **kw) == 2
  assert benchmarks.write_geneval(pipe, shards[1], out, batch_size=4, **kw) == 1
  got = read_geneval_folder(out)
  assert sorted(got) == ["00000", "00001", "00002"]
  for i, (m, images, names) in enumerate(got[k] for k in sorted(got)):
    assert m == GENEVAL_LINES[i] and names == ["0000.png", "0001.png"]
    assert all(im.shape == (pipe.resolution, pipe.resolution, 3) for im in images)
  assert not np.array_equal(got["00000"][1][0], got["00000"][1][1])  # two different seeds
  # Resume: nothing to do; a lost file is redone, identical (seeds depend on (i, k) only).
  assert benchmarks.write_geneval(pipe, items, out, batch_size=3, **kw) == 0
  lost = os.path.join(out, "00001", "samples", "0001.png")
  before = np.asarray(Image.open(lost))
  os.remove(lost)
  assert benchmarks.write_geneval(pipe, items, out, batch_size=2, **kw) == 1  # same batch as before
  np.testing.assert_array_equal(np.asarray(Image.open(lost)), before)
  assert not any(f.endswith(".tmp") for _, _, fs in os.walk(out) for f in fs)


@pytest.mark.slow
def test_dpg_grids_hold_the_same_samples(pipe, tmp_path):
  prompts = tmp_path / "prompts"
  prompts.mkdir()
  (prompts / "countbench27.txt").write_text("Seven brown glass bottles on a white table.\n")
  (prompts / "partiprompts3.txt").write_text("a photo of a dog\n")
  out = str(tmp_path / "dpg")
  items = benchmarks.read_dpg(str(prompts))
  assert [it.name for it in items] == ["countbench27", "partiprompts3"]
  n = benchmarks.write_dpg(pipe, items, out, sampling=FEW, seed=7, batch_size=4,
                           show_progress=False)
  assert n == 2 and sorted(os.listdir(out)) == ["countbench27.png", "partiprompts3.png"]
  r = pipe.resolution
  grid = np.asarray(Image.open(os.path.join(out, "partiprompts3.png")))
  assert grid.shape == (2 * r, 2 * r, 3)
  # Quadrant k is sample k of item 1: the GenEval writer draws the same noise for (1, k).
  geneval_items = [benchmarks.Item(1, "a photo of a dog", "00001", "{}")]
  benchmarks.write_geneval(pipe, geneval_items, str(tmp_path / "g"), sampling=FEW, samples=4,
                           seed=7, batch_size=4, show_progress=False)
  for k in range(4):
    sample = np.asarray(Image.open(tmp_path / "g" / "00001" / "samples" / f"{k:04d}.png"))
    row, col = divmod(k, 2)
    np.testing.assert_array_equal(grid[row * r:(row + 1) * r, col * r:(col + 1) * r], sample)
  assert benchmarks.write_dpg(pipe, items, out, sampling=FEW, seed=7, show_progress=False) == 0
