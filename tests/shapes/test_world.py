"""The shapes world: deterministic, labels that match the pixels, files a pipeline reads."""
import collections
import json
import os

import numpy as np
import pytest

from showo2_jax.shapes import classify, world


def test_scenes_and_pixels_are_deterministic():
  a = [world.scene(3, i) for i in range(20)]
  b = [world.scene(3, i) for i in range(20)]
  assert a == b
  assert a != [world.scene(4, i) for i in range(20)]
  for s in a[:5]:
    np.testing.assert_array_equal(world.render(s, 32), world.render(s, 32))


@pytest.mark.parametrize("size", [32, 64])
def test_labels_match_pixels(size):
  """The classifiers read every label back from the rendered pixels."""
  seen = collections.Counter()
  for i in range(300):
    s = world.scene(0, i)
    img = world.render(s, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert classify.colour_of(img) == s.colour, (i, s)
    assert classify.shape_of(img) == s.shape, (i, s, classify.shape_features(img))
    # The shape sits where the caption says: its centroid's third of the image.
    ys, xs = np.nonzero(classify.shape_pixels(img))
    third = ("left", "center", "right")[min(int(xs.mean() / size * 3), 2)]
    assert third == s.position, (i, s)
    seen[s.colour, s.shape] += 1
  assert len(seen) == len(world.COLOURS) * len(world.SHAPES)


def test_heldout_combinations_never_trained():
  held = set(world.heldout_combos())
  assert len(held) == len(world.COLOURS) * len(world.SHAPES)
  assert all(world.scene(0, i).combo not in held for i in range(500))
  assert all(world.scene(0, i, world.HELDOUT).combo in held for i in range(50))
  # Position does not tell the held-out shapes apart.
  assert {(c[2], c[3]) for c in held} == {(s, p) for s in world.SHAPES for p in world.POSITIONS}
  # Question images cover every combination (the shape is not implied by the rest).
  assert {world.scene(0, i, world.QUESTION).combo for i in range(2000)} == set(world.all_combos())
  # Every word is still trained on in other combinations.
  train = {world.scene(0, i).combo for i in range(2000)}
  for size, colour, shape, position in held:
    assert any(c[1] == colour and c[2] == shape for c in train)
    assert any(c[0] == size and c[3] == position for c in train)


def test_captions_and_answers():
  s = world.Scene("red", "circle", "left", "small", 128, 0.0, 0.0, 0)
  assert s.caption(0) == "a small red circle on the left"
  assert s.caption(1) == "a red circle on the left"
  assert s.caption(2) == "a red circle"
  assert [a for _, _, a in world.questions(s)] == ["red", "circle", "on the left"]


def test_write_world_files(tmp_path):
  files = world.write_world(str(tmp_path), num_images=12, num_clips=2, image_size=32, seed=0,
                            num_heldout=5)
  t2i = [json.loads(l) for l in open(files.t2i)]
  caps = [json.loads(l) for l in open(files.captions)]
  llava = json.load(open(files.llava))
  assert len(t2i) == len(caps) == len(llava) == 12
  kinds = collections.Counter()
  for i, (row, cap, conv) in enumerate(zip(t2i, caps, llava)):
    s = world.scene(0, i)
    q = world.scene(0, i, world.QUESTION)
    assert row["prompt"] == s.caption() and cap["path"] == conv["image"] != row["path"]
    assert cap["prompt"] == q.caption(2 if q.combo in world.heldout_combos() else 0)
    assert os.path.exists(tmp_path / row["path"]) and os.path.exists(tmp_path / conv["image"])
    human, gpt = conv["conversations"]
    assert human["value"].startswith("<image>\n")
    kind = {q: k for k, q in world.QUESTIONS.items()}[human["value"].split("\n", 1)[1]]
    assert gpt["value"] == q.answer(kind)
    kinds[kind] += 1
  assert kinds == {"colour": 3, "shape": 6, "position": 3}
  from PIL import Image
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / t2i[0]["path"])),
                                world.render(world.scene(0, 0), 32))
  clip = Image.open(tmp_path / "videos" / "000000.gif")
  assert clip.n_frames == 5
  scenes, size = world.read_heldout(files.heldout)
  assert size == 32 and len(scenes) == 5 and scenes[0] == world.scene(0, 0, world.HELDOUT)
  for i, rel in enumerate(json.load(open(files.heldout))["images"]):   # files to try `understand` on
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / rel)), world.render(scenes[i], 32))


def test_pipeline_reads_the_world(tmp_path):
  """The files go through the real Grain pipeline with the world's tokenizer."""
  from configs import data as data_configs
  from showo2_jax.data import build, tokenizer
  from showo2_jax.shapes import tokenizer as shapes_tokenizer
  files = world.write_world(str(tmp_path / "w"), num_images=16, num_clips=0, image_size=32, seed=0)
  tok, special = tokenizer.load_tokenizer(shapes_tokenizer.build_tokenizer(str(tmp_path / "tok")))
  d = data_configs.stage2(files.t2i, files.llava, batch_size_t2i=2, batch_size_mmu=2, min_res=())
  batch = next(iter(build.pipeline_from_config(d, tok, special, resolution=32, max_seq_len=48)))
  assert batch["pixel_values"].shape == (4, 3, 32, 32)
  assert batch["is_und"].tolist() == [False, False, True, True]
  # The understanding rows label exactly the answer and its eos.
  labels = batch["text_labels"][2]
  answer = tok.decode([int(t) for t in labels if t >= 0], skip_special_tokens=True)
  assert answer.strip() in {"red", "green", "blue", "yellow", "circle", "square", "triangle",
                            "on the left", "in the center", "on the right"}


def test_pipeline_lays_out_the_vae_stride_grid(tmp_path):
  """A VAE with stride 4 at 32 px gives 8x8 latents = 4x4 patches: every visual
  block holds 16 patches + the time slot, as many as the model fills (a block laid
  out for Wan's stride 8 would hold 5, and the model would see a quarter of it)."""
  from configs import data as data_configs, tiny_shapes
  from showo2_jax.data import build, tokenizer
  from showo2_jax.shapes import tokenizer as shapes_tokenizer
  from showo2_jax.train import data as train_data
  config = tiny_shapes.get_config()
  stride, patch = train_data.visual_grid(config)
  assert (stride, patch) == (4, 2)
  files = world.write_world(str(tmp_path / "w"), num_images=8, num_clips=0, image_size=32, seed=0)
  tok, special = tokenizer.load_tokenizer(shapes_tokenizer.build_tokenizer(str(tmp_path / "tok")))
  d = data_configs.stage2(files.t2i, files.llava, batch_size_t2i=2, batch_size_mmu=2, min_res=())
  batch = next(iter(build.pipeline_from_config(d, tok, special, resolution=32,
                                               max_seq_len=config.max_seq_len,
                                               vae_stride=stride, patch_size=patch)))
  assert batch["image_masks"].sum(1).tolist() == [17] * 4
  assert batch["modality_positions"][:, 0, 1].tolist() == [17] * 4
  config.resolution = 64
  with pytest.raises(ValueError, match="config.resolution 64 gives a 8x8 patch grid"):
    train_data.visual_grid(config)


def test_heldout_captions_in_no_file(tmp_path):
  """No training file says a held-out scene's full caption (the evaluation's prompt),
  and the generation file has no held-out image; the understanding files do."""
  files = world.write_world(str(tmp_path), num_images=240, num_clips=0, image_size=32, seed=0,
                            num_heldout=4)
  held = world.heldout_combos()
  prompts = {world.Scene(c, sh, p, sz, 128, 0.0, 0.0, 0).caption(0) for sz, c, sh, p in held}
  text = open(files.t2i).read() + open(files.captions).read() + open(files.llava).read()
  assert not any(p in text for p in prompts)
  assert not any(world.scene(0, i).combo in held for i in range(240))
  assert any(world.scene(0, i, world.QUESTION).combo in held for i in range(240))
