"""The pixel classifiers eval-shapes uses on generated images."""
import numpy as np
import pytest

from showo2_jax.shapes import classify, world


@pytest.mark.parametrize("name", list(world.COLOURS))
def test_colour_of_patches(name):
  img = np.full((32, 32, 3), 128, np.uint8)
  img[8:20, 10:22] = world.COLOURS[name]
  assert classify.colour_of(img) == name
  # Noise and a darker, less saturated version of the colour still vote for it.
  rng = np.random.default_rng(0)
  noisy = np.clip(img.astype(int) * 0.8 + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
  assert classify.colour_of(noisy) == name


def test_no_shape_is_none():
  for grey in (0, 60, 128, 200, 255):
    img = np.full((32, 32, 3), grey, np.uint8)
    assert classify.colour_of(img) is None and classify.shape_of(img) is None


def test_majority_wins():
  img = np.full((32, 32, 3), 200, np.uint8)
  img[4:20, 4:20] = world.COLOURS["blue"]       # 256 pixels
  img[24:28, 24:28] = world.COLOURS["red"]      # 16 pixels
  assert classify.colour_of(img) == "blue"


@pytest.mark.parametrize("shape", world.SHAPES)
def test_shape_of_every_size_and_place(shape):
  for size in world.SIZES:
    for position in world.POSITIONS:
      s = world.Scene("green", shape, position, size, 60, 0.01, -0.03, 0)
      assert classify.shape_of(world.render(s, 32)) == shape


def test_names_only():
  from showo2_jax.shapes.report import names_only
  assert names_only("red", "red", world.COLOURS)
  assert names_only("It is red.", "red", world.COLOURS)
  assert not names_only("red or blue", "red", world.COLOURS)
  assert not names_only("reddish", "red", world.COLOURS)
  assert not names_only("", "circle", world.SHAPES)
