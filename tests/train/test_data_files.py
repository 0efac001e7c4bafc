"""`train --data FILE` on real files through the Grain pipeline.

The data files (YAML and Python forms) are checked field by field; then the
trainer reads image-text JSONL (generation and captioning), LLaVA JSON and
VIST-style interleaved stories with 2 images per row, all written here, in one
mixed batch of pixel images encoded in the step by a random tiny VAE: its
loss falls, and a kill -9 restart continues bit for bit. Video (MP4 clips
written with the project's own writer) trains in a run of its own, as clips
and images cannot share a batch: the same checks.
"""
import shutil
import signal
import textwrap
import time

import numpy as np
import pytest

from showo2_jax import config_lib
from showo2_jax.data import data_file, testing
from showo2_jax.train import data as data_lib
from tests.train import runs

KEYS = ("loss", "ntp_loss", "flow_loss", "grad_norm")


def _write_datasets(root):
  t2i = testing.write_image_text_dataset(root / "t2i", 6, size=(72, 64))
  llava = testing.write_llava_dataset(root / "llava", 6, size=(64, 80))
  vist = testing.write_vist_dataset(root / "vist", 4, images_per_story=(3, 2), size=(64, 64))
  return t2i, llava, vist


def _yaml(root, t2i, llava, vist):
  path = root / "data.yaml"
  path.write_text(textwrap.dedent(f"""\
      seed: 3
      streams:
        t2i: {{task: t2i, path: "{root}/t2i/*.jsonl", batch_size: 2}}
        mmu: {{task: captioning, path: "{t2i}", batch_size: 1}}
        llava: {{task: llava, path: "{llava}", batch_size: 1}}
        vist: {{task: vist, path: "{vist}", batch_size: 2, max_num_images: 2}}
      """))
  return path


def test_data_file_forms_and_errors(tmp_path):
  t2i, llava, vist = _write_datasets(tmp_path)
  c = data_file.load(str(_yaml(tmp_path, t2i, llava, vist)))
  assert c.stream_order == ("t2i", "mmu", "llava", "vist") and c.seed == 3
  assert c.streams.vist.max_num_images == 2 and c.streams.t2i.cond_dropout_prob == 0.1
  py = tmp_path / "data.py"
  py.write_text(textwrap.dedent(f"""\
      from configs import data
      def get_config(arg=None):
        return data.stage1("{t2i}", "{t2i}")
      """))
  c = data_file.load(str(py))
  assert (c.streams.t2i.batch_size, c.streams.mmu.batch_size) == (6, 2)
  w = tmp_path / "weights.yaml"
  w.write_text(f"rows_per_batch: 8\nstreams:\n  a: {{task: t2i, path: {t2i}, weight: 3}}\n"
               f"  b: {{task: captioning, path: {t2i}, weight: 1}}\n")
  c = data_file.load(str(w))
  assert (c.streams.a.batch_size, c.streams.b.batch_size) == (6, 2)
  for text, match in (
      (f"streams:\n  a: {{task: t2i, path: {t2i}, batch_size: 1, colour: red}}\n", "colour"),
      (f"streams:\n  a: {{task: t3i, path: {t2i}, batch_size: 1}}\n", "t3i"),
      ("streams:\n  a: {task: t2i, path: /nowhere/*.jsonl, batch_size: 1}\n", "matches no file"),
      (f"rows_per_batch: 8\nstreams:\n  a: {{task: t2i, path: {t2i}, weight: 2}}\n"
       f"  b: {{task: t2i, path: {t2i}, weight: 1}}\n", "whole rows"),
  ):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(data_file.DataFileError, match=match):
      data_file.load(str(bad))


def _video_yaml(root, frames=5):
  clips = testing.write_video_dataset(root / "video", 4, num_frames=7, size=(64, 48), ext="mp4")
  path = root / "video.yaml"
  path.write_text(textwrap.dedent(f"""\
      seed: 1
      streams:
        gen: {{task: video_t2i, path: "{clips}", batch_size: 2, num_frames: {frames}}}
        und: {{task: video_captioning, path: "{clips}", batch_size: 1, num_frames: {frames}}}
      """))
  return path, clips


def test_video_streams_size_the_step_and_stay_apart_from_images(tmp_path):
  path, clips = _video_yaml(tmp_path)
  c = config_lib.load_config("tiny_train")
  c.data = data_file.load(str(path))
  c.train.global_batch_size = 3
  assert data_lib.video_frames(c) == 5
  shapes = data_lib.batch_shapes(c)   # 5 frames -> 2 latent frames (Wan: 4x in time)
  assert shapes["latents"].shape == (3, 1, 16, 2, 8, 8)
  c.vae_checkpoint = "random"
  assert data_lib.batch_shapes(c)["pixel_values"].shape == (3, 1, 3, 5, 64, 64)
  for text, match in (
      (f"streams:\n  v: {{task: video_t2i, path: {clips}, batch_size: 1}}\n"
       f"  i: {{task: t2i, path: {clips}, batch_size: 1}}\n", "cannot share a batch"),
      (f"streams:\n  v: {{task: video_t2i, path: {clips}, batch_size: 1, num_frames: 5}}\n"
       f"  w: {{task: video_captioning, path: {clips}, batch_size: 1, num_frames: 9}}\n", "agree on num_frames"),
      (f"streams:\n  v: {{task: video_t2i, path: {clips}, batch_size: 1, num_frames: 6}}\n", "1 \\+ 4k"),
  ):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(data_file.DataFileError, match=match):
      data_file.load(str(bad))
  # A block built in Python (configs/data.py) skips the file checks: the trainer's
  # iterator refuses it before reading anything.
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  c.data = data_configs.base()
  c.data.streams.v = data_configs.stream("video_t2i", clips, 2, num_frames=5)
  c.data.streams.i = data_configs.stream("t2i", clips, 1)
  c.data.stream_order = ("v", "i")
  with pytest.raises(ValueError, match="cannot share a batch"):
    data_lib.make_iterator(c, _one_device_mesh())


def _one_device_mesh():
  import jax  # pylint: disable=import-outside-toplevel
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def test_shipped_example_data_files_parse():
  found = sorted((runs.REPO / "configs" / "data").glob("*.*"))
  assert len(found) >= 4
  for path in found:
    c = data_file.load(str(path), check_paths=False)
    assert c.stream_order and all(c.streams[n].batch_size > 0 for n in c.stream_order), path


@pytest.mark.slow
def test_trainer_on_files_learns_and_resumes_exactly(tmp_path):
  t2i, llava, vist = _write_datasets(tmp_path)
  data = _yaml(tmp_path, t2i, llava, vist)
  ref = _learns_and_resumes(tmp_path, data, steps=12, batch=6)
  assert all(ref[s]["data/num_bad"] == 0 for s in ref)


@pytest.mark.slow
def test_trainer_on_video_files_learns_and_resumes_exactly(tmp_path):
  """MP4 clips of 7 frames, 5 sampled (2 latent frames), encoded in the step by the
  random tiny VAE: video generation and video captioning rows."""
  data, _ = _video_yaml(tmp_path)
  ref = _learns_and_resumes(tmp_path, data, steps=8, batch=3, ntp_drop=0.95)
  assert all(ref[s]["data/num_bad"] == 0 for s in ref)


def _learns_and_resumes(tmp_path, data, *, steps, batch, kill_after=4, ntp_drop=0.9):
  """`steps` steps of tiny_train on `data`: the losses fall (the last 3 steps' mean
  below 0.95 x the first 3's; ntp below `ntp_drop` x), and a run killed (-9) after
  its step-`kill_after` checkpoint continues bit for bit."""
  tok = testing.build_test_tokenizer(tmp_path / "tok")
  common = ("--data", str(data), f"--config.tokenizer_path={tok}", "--config.vae_checkpoint=random",
            "--config.max_seq_len=96", f"--config.train.global_batch_size={batch}",
            "--config.optim.warmup_steps=0", f"--config.train.num_steps={steps}", *runs.LOGGED)
  ref = runs.run(tmp_path / "ref", *common, "--config.checkpoint.every_steps=100000", timeout=900)
  assert sorted(ref) == list(range(1, steps + 1))
  mean = lambda key, at: sum(ref[s][key] for s in at) / len(at)
  first, last = (1, 2, 3), (steps - 2, steps - 1, steps)
  assert mean("loss", last) < 0.95 * mean("loss", first), [round(ref[s]["loss"], 3) for s in sorted(ref)]
  assert mean("ntp_loss", last) < ntp_drop * mean("ntp_loss", first), [ref[s]["ntp_loss"] for s in sorted(ref)]

  work = tmp_path / "killed"
  a = runs.start(work, *common, f"--config.checkpoint.every_steps={kill_after}", "--config.checkpoint.keep=5")
  try:
    _wait(lambda: kill_after in runs.checkpoint_steps(work)
          and max(runs.read_metrics(work), default=0) >= kill_after + 2, a, work, 900)
  finally:
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=60)
  for later in runs.checkpoint_steps(work):
    if later > kill_after:
      shutil.rmtree(work / "checkpoints" / str(later))
  resumed = runs.run(work, *common, "--config.checkpoint.every_steps=100000", timeout=900)
  for s in range(kill_after + 1, steps + 1):
    for k in KEYS:
      assert resumed[s][k] == ref[s][k], (s, k, resumed[s][k], ref[s][k])
  return ref


def _wait(predicate, proc, workdir, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, f"the run exited ({proc.returncode}) early:\n{runs.log_tail(workdir)}"
    time.sleep(0.2)
  raise AssertionError("timed out waiting for the checkpoint before the kill")
