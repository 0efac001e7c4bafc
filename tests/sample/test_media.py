"""Tests of pixel post-processing and image/video files."""
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from showo2_jax.sample import media


def test_denorm_values_truncate_and_clamp():
  x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0, np.nan], np.float32)
  img = np.broadcast_to(x[None, None, None, :], (1, 3, 1, 7))
  out = media.denorm_to_uint8(img)
  assert out.dtype == np.uint8 and out.shape == (1, 1, 7, 3)
  # (0 + 1) / 2 * 255 = 127.5 -> 127 and 0.999 -> 254.87 -> 254: truncation, not rounding.
  np.testing.assert_array_equal(out[0, 0, :, 0], [0, 0, 127, 254, 255, 255, 0])


def test_denorm_layouts():
  rng = np.random.default_rng(0)
  img = rng.uniform(-1, 1, (2, 3, 4, 5)).astype(np.float32)
  out = media.denorm_to_uint8(img)
  assert out.shape == (2, 4, 5, 3)
  assert out[1, 2, 3, 0] == np.uint8((img[1, 0, 2, 3] + 1) / 2 * 255)
  vid = rng.uniform(-1, 1, (1, 3, 6, 4, 5)).astype(np.float32)
  out = media.denorm_to_uint8(vid)
  assert out.shape == (1, 6, 4, 5, 3)
  np.testing.assert_array_equal(out[0, 2], media.denorm_to_uint8(vid[:, :, 2])[0])
  with pytest.raises(ValueError):
    media.denorm_to_uint8(img[0])


def test_denorm_bitwise_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  x = rng.uniform(-1.1, 1.1, (2, 3, 16, 16)).astype(np.float32)
  for t_dtype, j_dtype in ((torch.float32, jnp.float32), (torch.bfloat16, jnp.bfloat16)):
    t = torch.tensor(x).to(t_dtype)
    ref = torch.clamp((t + 1.0) / 2.0, min=0.0, max=1.0).to(torch.float32) * 255.0
    ref = ref.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    np.testing.assert_array_equal(media.denorm_to_uint8(jnp.asarray(x, j_dtype)), ref)


def test_save_png_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
  paths = [tmp_path / "a" / "00000.png", tmp_path / "a" / "00001.png"]
  assert media.save_png(images, paths) == paths
  for image, path in zip(images, paths):
    np.testing.assert_array_equal(media.load_image(path), image)
  single = media.save_png(images[0], tmp_path / "one.png")
  np.testing.assert_array_equal(media.load_image(single[0]), images[0])


def test_save_png_rejects_float_and_count_mismatch(tmp_path):
  with pytest.raises(TypeError, match="denorm_to_uint8"):
    media.save_png(np.zeros((1, 4, 4, 3), np.float32), [tmp_path / "x.png"])
  with pytest.raises(ValueError, match="2 images but 1 paths"):
    media.save_png(np.zeros((2, 4, 4, 3), np.uint8), [tmp_path / "x.png"])


def _frames(t=5):
  # Distinct frames: Pillow merges consecutive identical GIF frames.
  frames = np.zeros((t, 16, 16, 3), np.uint8)
  for i in range(t):
    frames[i, :, :, i % 3] = (40 * (i + 1)) % 256
  return frames


def _gif_frame_count(path):
  with Image.open(path) as gif:
    return gif.n_frames, gif.size


def test_save_video_gif(tmp_path):
  path = media.save_video(_frames(), tmp_path / "clip.gif", fps=10)
  assert path == tmp_path / "clip.gif"
  assert _gif_frame_count(path) == (5, (16, 16))


def test_save_video_falls_back_to_gif_with_a_log_line(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(media, "mp4_backend", lambda: None)
  with caplog.at_level(logging.WARNING, logger=media.__name__):
    path = media.save_video(_frames(), tmp_path / "out" / "clip.mp4", fps=8)
  assert path == tmp_path / "out" / "clip.gif"
  assert _gif_frame_count(path) == (5, (16, 16))
  assert "clip.mp4" in caplog.text and "GIF" in caplog.text


def test_save_video_mp4_when_a_backend_exists(tmp_path):
  if media.mp4_backend() is None:
    pytest.skip("no imageio video backend (imageio-ffmpeg / av) installed")
  path = media.save_video(_frames(8), tmp_path / "clip.mp4", fps=8)
  assert path.suffix == ".mp4" and path.stat().st_size > 0
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  assert iio.imread(path).shape[:3] == (8, 16, 16)


def test_save_video_validates_input(tmp_path):
  with pytest.raises(TypeError):
    media.save_video(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "x.gif")
  with pytest.raises(ValueError):
    media.save_video(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.gif")


def test_load_image_converts_to_rgb(tmp_path):
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  Image.fromarray(grey, "L").save(tmp_path / "grey.png")
  out = media.load_image(tmp_path / "grey.png")
  assert out.shape == (3, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 1], grey)
  rgba = np.full((2, 2, 4), 200, np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  assert media.load_image(tmp_path / "rgba.png").shape == (2, 2, 3)


def test_load_image_missing_file(tmp_path):
  path = tmp_path / "nope.jpg"
  with pytest.raises(media.ImageLoadError, match="nope.jpg") as info:
    media.load_image(path)
  assert isinstance(info.value, ValueError) and info.value.path == path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_load_image_corrupt_file(tmp_path, kind):
  good = tmp_path / "good.png"
  Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
  data = {"garbage": b"this is not an image" * 10, "empty": b"",
          "truncated": good.read_bytes()[: good.stat().st_size // 2]}[kind]
  bad = tmp_path / f"{kind}.png"
  bad.write_bytes(data)
  with pytest.raises(media.ImageLoadError, match=f"{kind}.png"):
    media.load_image(bad)
