"""Pixel transforms: torchvision-equivalent geometry, letterboxing, colour modes, frames."""
import numpy as np
from PIL import Image

from showo2_jax.data import testing, transforms


def _noise(w, h, seed=0):
  return testing.random_image(np.random.default_rng(seed), w, h)


def _pixels(img):
  return (np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5


def test_image_transform_resizes_the_short_side_and_center_crops():
  img = _noise(100, 60)
  out = transforms.image_transform(img, 32)
  assert out.shape == (3, 32, 32) and out.dtype == np.float32
  # Long side int(32 * 100 / 60) = 53; left offset round(21 / 2) = 10 (half to even).
  resized = img.resize((53, 32), Image.Resampling.BICUBIC)
  np.testing.assert_array_equal(out, _pixels(resized.crop((10, 0, 42, 32))))


def test_image_transform_portrait_and_exact_size():
  img = _noise(45, 90)
  out = transforms.image_transform(img, 30)
  resized = img.resize((30, 60), Image.Resampling.BICUBIC)
  np.testing.assert_array_equal(out, _pixels(resized.crop((0, 15, 30, 45))))
  same = _noise(32, 32)
  np.testing.assert_array_equal(transforms.image_transform(same, 32), _pixels(same))
  assert out.min() >= -1.0 and out.max() <= 1.0


def test_resize_and_pad_letterboxes_on_black():
  img = _noise(100, 60)
  out = transforms.resize_and_pad(img, 32)
  assert out.size == (32, 32)
  # scale 0.32: width 32, height ceil(19.2) = 20, pasted at y = 6.
  arr = np.asarray(out)
  assert (arr[:6] == 0).all() and (arr[26:] == 0).all()
  np.testing.assert_array_equal(arr[6:26], np.asarray(img.resize((32, 20), Image.Resampling.BICUBIC)))
  tall = transforms.resize_and_pad(_noise(10, 40), 32)
  assert (np.asarray(tall)[:, :12] == 0).all() and (np.asarray(tall)[:, 20:] == 0).all()


def test_colour_modes():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[..., 3] = 0  # fully transparent: the colour is kept, not composited
  out = transforms.to_rgb_or_none(Image.fromarray(rgba, "RGBA"))
  assert out.mode == "RGB" and (np.asarray(out)[..., 0] == 200).all()
  gray = Image.fromarray(np.full((4, 4), 77, np.uint8), "L")
  assert (np.asarray(transforms.to_rgb_or_none(gray)) == 77).all()
  pal = _noise(4, 4).convert("P")
  assert transforms.to_rgb_or_none(pal).mode == "RGB"
  assert transforms.to_rgb_or_none(_noise(4, 4).convert("CMYK")) is None
  assert transforms.to_rgb_or_none(gray.convert("LA")) is None


def test_min_resolution_is_height_then_width():
  img = _noise(300, 200)  # w 300, h 200
  assert transforms.meets_min_resolution(img, (200, 300))
  assert not transforms.meets_min_resolution(img, (256, 256))
  assert transforms.meets_min_resolution(img, None)


def test_frame_indices_are_truncated_linspace():
  assert transforms.frame_indices(10, 4).tolist() == [0, 3, 6, 9]
  assert transforms.frame_indices(3, 5).tolist() == [0, 0, 1, 1, 2]


def test_caption_dropout_rate():
  rng = np.random.default_rng(0)
  dropped = sum(transforms.drop_caption("x", 0.1, rng) == "" for _ in range(5000))
  assert 400 < dropped < 600
  assert transforms.drop_caption("x", 0.0, rng) == "x"


def test_black_pixels():
  assert (transforms.black_pixels(8) == -1).all()
  np.testing.assert_array_equal(
      transforms.black_pixels(8), transforms.to_pixels(Image.new("RGB", (8, 8))))
