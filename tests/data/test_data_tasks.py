"""Tasks: record -> row with visual inputs; bad media skipped, filters applied."""
import numpy as np
import pytest

from showo2_jax.data import sequences, sources, tasks, testing, tokenizer

R, L = 64, 64          # tiny config: 8x8 latents, 4x4 patches
NV = 17                # 16 patches + the time slot


def rng(seed=0):
  return np.random.default_rng(seed)


def test_num_visual_tokens():
  assert tasks.num_visual_tokens(64) == NV
  assert tasks.num_visual_tokens(432) == 730
  assert tasks.num_visual_tokens(432, latent_frames=5) == 3646


def test_t2i_row_from_a_record(tmp_path, tok, special):
  ds = sources.image_text_source(testing.write_image_text_dataset(tmp_path, 1))
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, cond_dropout_prob=0.0)
  row = task(ds[0], rng())
  ids = tokenizer.encode(tok, "a cat number 0.")  # newline and "The image features " removed
  expect = sequences.t2i_row(ids, special, num_visual_tokens=NV, max_seq_len=L)
  for k in expect:
    np.testing.assert_array_equal(row[k], expect[k])
  assert row["pixel_values"].shape == (1, 3, R, R) and row["pixel_values"].dtype == np.float32
  assert row["is_und"] == False  # noqa: E712


def test_caption_dropout_gives_the_null_row(tmp_path, tok, special):
  ds = sources.image_text_source(testing.write_image_text_dataset(tmp_path, 1))
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, cond_dropout_prob=1.0)
  null = sequences.t2i_null_row(special, num_visual_tokens=NV, max_seq_len=L)
  np.testing.assert_array_equal(task(ds[0], rng())["text_tokens"], null["text_tokens"])


def test_captioning_row_keeps_boilerplate_and_is_und(tmp_path, tok, special):
  ds = sources.image_text_source(testing.write_image_text_dataset(tmp_path, 1))
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, captioning=True,
                             cond_dropout_prob=1.0)  # ignored for captioning
  row = task(ds[0], rng())
  ids = tokenizer.encode(tok, "The image features a cat number 0.")
  ids = ids[:sequences.t2i_max_text_len(L, NV)]
  expect = sequences.captioning_row(ids, special, num_visual_tokens=NV, max_seq_len=L)
  np.testing.assert_array_equal(row["text_labels"], expect["text_labels"])
  assert row["is_und"] == True  # noqa: E712


def test_bad_and_filtered_images_are_skipped(tmp_path, tok, special):
  rs = np.random.default_rng(0)
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
  testing.random_image(rs, 20, 20).save(tmp_path / "small.png")
  testing.random_image(rs, 80, 80).convert("CMYK").save(tmp_path / "cmyk.jpg")
  task = tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L, min_res=(32, 32))
  result = {name: task({"path": str(tmp_path / name), "prompt": "x"}, rng())
            for name in ("corrupt.png", "missing.png", "small.png", "cmyk.jpg")}
  assert result["corrupt.png"].kind == "bad" and result["missing.png"].kind == "bad"
  assert result["small.png"].kind == "filtered" and result["cmyk.jpg"].kind == "filtered"


def test_llava_task_letterboxes_and_handles_text_only(tmp_path, tok, special):
  ds = sources.llava_source(testing.write_llava_dataset(tmp_path, 3, size=(80, 40)))
  task = tasks.LlavaTask(tok, special, resolution=R, max_seq_len=128, stage="tuning")
  row = task(ds[0], rng())
  assert row["pixel_values"].shape == (1, 3, R, R)
  assert (row["pixel_values"][0, :, :16] == -1).all()  # black bars above a wide image
  assert row["modality_positions"][0, 1] == NV and row["is_und"]
  text_only = task(ds[2], rng())
  assert text_only["modality_positions"].tolist() == [[0, 0]]
  assert (text_only["pixel_values"] == -1).all()


def test_llava_multi_image_and_edit_tasks(tmp_path, tok, special):
  """LLaVA-OneVision multi-image records ("image" a list, one <image> per image) and
  editing triples, through their sources, tasks and the config's task table."""
  import json  # pylint: disable=g-import-not-at-top
  from showo2_jax.data import build  # pylint: disable=g-import-not-at-top
  for i, size in enumerate([(80, 40), (40, 80), (64, 64)]):
    testing.random_image(rng(i), *size).save(tmp_path / f"im{i}.png")
  (tmp_path / "ov.json").write_text(json.dumps([{
      "image": ["im0.png", "im1.png"],
      "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich is taller?"},
                        {"from": "gpt", "value": "The second."}]}]))
  ds = sources.llava_source(str(tmp_path / "ov.json"))
  assert build.task_spec("llava_multi_image").options == ("stage", "max_num_images")
  task = tasks.LlavaTask(tok, special, resolution=R, max_seq_len=128, max_num_images=3)
  row = task(ds[0], rng())
  assert row["pixel_values"].shape == (3, 3, R, R)
  assert (row["pixel_values"][0, :, :16] == -1).all() and (row["pixel_values"][1, :, :, :16] == -1).all()
  assert (row["pixel_values"][2] == 0).all()           # the empty third slot
  assert row["modality_positions"][:, 1].tolist() == [NV, NV, 0]
  one = tasks.LlavaTask(tok, special, resolution=R, max_seq_len=128)
  assert isinstance(one(ds[0], rng()), tasks.Skipped)  # two images do not fit one slot

  (tmp_path / "edit.jsonl").write_text(json.dumps(
      {"source": "im2.png", "target": "im0.png", "instruction": "make it wide"}) + "\n")
  edits = sources.edit_source(str(tmp_path / "edit.jsonl"))
  task = tasks.EditTask(tok, special, resolution=R, max_seq_len=L, cond_dropout_prob=0.0)
  row = task(edits[0], rng())
  assert row["pixel_values"].shape == (2, 3, R, R) and not row["is_und"]
  (s_off, _), (t_off, _) = row["modality_positions"].tolist()
  assert row["image_masks"][s_off:s_off + NV].sum() == 0 and row["image_masks"][t_off:t_off + NV].all()
  dropped = tasks.EditTask(tok, special, resolution=R, max_seq_len=L, cond_dropout_prob=1.0)
  null = dropped(edits[0], rng())
  assert null["modality_positions"][1, 0] == s_off + NV + 2  # no instruction tokens left


def test_vist_task_window_and_empty_slots(tmp_path, tok, special):
  ds = sources.vist_source(testing.write_vist_dataset(tmp_path, 2, images_per_story=(5, 2)))
  task = tasks.VistTask(tok, special, resolution=R, max_seq_len=256)
  row = task(ds[1], rng())  # two images: two slots used, two empty
  assert row["pixel_values"].shape == (4, 3, R, R)
  assert (row["pixel_values"][2:] == 0).all() and not (row["pixel_values"][:2] == 0).all()
  assert row["modality_positions"][2:].tolist() == [[0, 0], [0, 0]]
  flag = tokenizer.encode(tok, sequences.VIST_FLAG)
  assert row["text_tokens"][1:1 + len(flag)].tolist() == flag
  assert (row["text_labels"][1:1 + len(flag)] == sequences.IGNORE_INDEX).all()
  starts = set()
  for seed in range(30):  # 5 images, windows of 4: starts 0 or 1
    r = task(ds[0], rng(seed))
    first = r["text_tokens"][1 + len(flag):r["modality_positions"][0, 0] - 1]
    starts.add(tok.decode(first.tolist()).split(":")[0])
  assert starts == {"story 0 part 0", "story 0 part 1"}


def test_vist_task_uses_the_latents_of_its_window(tok, special):
  task = tasks.VistTask(tok, special, resolution=R, max_seq_len=256)
  latents = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 16, 8, 8), np.float32)
  record = {"images": [f"p{i}.jpg" for i in range(5)], "captions": [f"c{i}" for i in range(5)],
            "latents": latents, "latents_logvar": -latents}
  for seed in range(10):
    row = task(record, rng(seed))
    assert "pixel_values" not in row and row["latents"].shape == (4, 16, 8, 8)
    start = int(row["latents"][0, 0, 0, 0])
    assert row["latents"][:, 0, 0, 0].tolist() == list(range(start, start + 4))
    np.testing.assert_array_equal(row["latents_logvar"], -row["latents"])


def test_video_task_reads_gif_and_frame_folders(tmp_path, tok, special):
  ds = sources.video_text_source(testing.write_video_dataset(tmp_path, 1, num_frames=7))
  task = tasks.VideoTextTask(tok, special, resolution=R, max_seq_len=128, num_frames=5)
  row = task(ds[0], rng())
  assert row["pixel_values"].shape == (1, 3, 5, R, R)
  n = tasks.num_visual_tokens(R, latent_frames=2)
  assert row["modality_positions"][0, 1] == n and row["image_masks"].sum() == n
  folder = tmp_path / "frames"
  folder.mkdir()
  rs = np.random.default_rng(1)
  for i in range(3):
    testing.random_image(rs, 40, 30).save(folder / f"{i:03d}.png")
  row = task({"path": str(folder), "prompt": "x"}, rng())
  assert row["pixel_values"].shape == (1, 3, 5, R, R)
  # Frames 0, 0, 1, 1, 2 of three (linspace).
  np.testing.assert_array_equal(row["pixel_values"][0, :, 0], row["pixel_values"][0, :, 1])
  assert task({"path": str(tmp_path / "none.gif"), "prompt": "x"}, rng()).kind == "bad"
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    tasks.VideoTextTask(tok, special, resolution=R, max_seq_len=128, num_frames=4)


def test_pixel_loaders_need_no_tokenizer(tmp_path):
  ds = sources.image_text_source(testing.write_image_text_dataset(tmp_path, 1))
  load = tasks.pixel_loader("image_text", R, min_res=(1, 1))
  assert load(ds[0]).shape == (1, 3, R, R)
  with pytest.raises(ValueError, match="unknown record kind"):
    tasks.pixel_loader("audio", R)
