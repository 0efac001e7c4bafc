"""Pixel classifiers for the shapes world: which colour, which shape.

`eval-shapes` uses them on generated images; the world's own images are the
test that they are right (tests/shapes).

Colour (`colour_of`): convert to HSV; pixels with saturation >= 0.4 and value
>= 0.25 are "shape" pixels (the backgrounds are neutral grey, saturation 0);
each votes for the named colour whose hue is nearest (circular distance); the
answer is the majority, or None when fewer than `min_pixels` pixels are
saturated (no shape drawn).

Shape (`shape_of`): coverage a = saturation / the shape colour's saturation,
clipped to [0, 1] (anti-aliased edges count fractionally). Around the pixels
where a >= 0.5, the soft width w (height h) sums each column's (row's) largest
coverage; fill = sum(a) / (w h) and drop = (centroid y - centre of the rows
with coverage) / h. A triangle pointing up has its
centroid a sixth of its height below the box centre (drop ~ 0.17) and fills
half its box; circles and squares are symmetric (drop ~ 0) and fill pi/4 and 1.
Rule: drop >= 0.08 or fill < 0.62 -> triangle; else fill >= 0.89 -> square;
else circle.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from showo2_jax.shapes import world

SATURATION_MIN = 0.4
VALUE_MIN = 0.25


def _hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 (H, W, 3) -> hue in [0, 1), saturation, value (floats)."""
  x = np.asarray(img, np.float32) / 255.0
  mx, mn = x.max(-1), x.min(-1)
  v = mx
  s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
  d = np.maximum(mx - mn, 1e-6)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
  return h % 1.0, s, v


def _palette_hues() -> dict[str, float]:
  out = {}
  for name, rgb in world.COLOURS.items():
    h, _, _ = _hsv(np.asarray(rgb, np.uint8)[None, None])
    out[name] = float(h[0, 0])
  return out


_HUES = _palette_hues()


def shape_pixels(img: np.ndarray) -> np.ndarray:
  """Boolean (H, W): pixels saturated and bright enough to belong to a shape."""
  _, s, v = _hsv(img)
  return (s >= SATURATION_MIN) & (v >= VALUE_MIN)


def colour_of(img: np.ndarray, min_pixels: int = 4) -> Optional[str]:
  """The named colour most shape pixels are closest to in hue, or None."""
  h, _, _ = _hsv(img)
  mask = shape_pixels(img)
  if int(mask.sum()) < min_pixels:
    return None
  names = list(_HUES)
  hues = np.asarray([_HUES[n] for n in names])
  d = np.abs(h[mask][:, None] - hues[None, :])
  d = np.minimum(d, 1.0 - d)
  votes = np.bincount(d.argmin(1), minlength=len(names))
  return names[int(votes.argmax())]


def shape_features(img: np.ndarray) -> Optional[tuple[float, float]]:
  """(fill, drop) of the shape (see the module docstring), or None without one."""
  colour = colour_of(img)
  if colour is None:
    return None
  _, s, v = _hsv(img)
  _, s_ref, _ = _hsv(np.asarray(world.COLOURS[colour], np.uint8)[None, None])
  a = np.clip(s / float(s_ref[0, 0]), 0.0, 1.0) * (v >= VALUE_MIN)
  ys, xs = np.nonzero(a >= 0.5)
  if len(ys) < 4:
    return None
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  box = a[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1]
  # Soft extents: a column (row) counts by its largest coverage, so partly
  # covered edge pixels count fractionally, as they do in the area.
  w = float(box.max(0).sum())
  hgt = float(box.max(1).sum())
  area = float(box.sum())
  fill = area / max(w * hgt, 1e-6)
  yy = np.arange(box.shape[0], dtype=np.float32)[:, None] + 0.5
  rows = box.max(1)
  top = float(np.argmax(rows > 0))
  cy = float((box * yy).sum() / max(area, 1e-6))
  centre = top + (float(np.nonzero(rows > 0)[0][-1]) + 1 - top) / 2
  drop = (cy - centre) / max(hgt, 1e-6)
  return fill, float(drop)


def shape_of(img: np.ndarray) -> Optional[str]:
  """'circle', 'square', 'triangle', or None when no shape is found."""
  f = shape_features(img)
  if f is None:
    return None
  fill, drop = f
  if drop >= 0.08 or fill < 0.62:
    return "triangle"
  return "square" if fill >= 0.89 else "circle"
