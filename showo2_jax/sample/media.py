"""Pixels in and out: VAE output -> uint8, PNG / video files, and image loading.

Host-side numpy code (no jit): it runs once per generated batch. `denorm_to_uint8`
reproduces the original's `denorm` bit for bit, including its truncating uint8 cast,
so saved images can be compared with the original's byte for byte.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import ml_dtypes
import numpy as np
from PIL import Image

from showo2_jax import paths as paths_lib

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class ImageLoadError(ValueError):
  """An image file is missing, unreadable or corrupt; the message names the file."""

  def __init__(self, path: PathLike, reason: str):
    super().__init__(f"cannot load image '{path}': {reason}")
    self.path = Path(path)


def denorm_to_uint8(x) -> np.ndarray:
  """[-1, 1] pixels, channel-first -> uint8, channel-last.

  (N, C, H, W) -> (N, H, W, C); videos (N, C, T, H, W) -> (N, T, H, W, C).
  Computes clamp((x + 1) / 2, 0, 1) in the input's dtype (as the original does, so
  bf16 inputs round there), then * 255 in float32 and truncates (no rounding):
  0.0 maps to 127, not 128. NaN becomes 0.
  """
  x = np.asarray(x)
  if x.ndim not in (4, 5):
    raise ValueError(f"expected (N, C, H, W) or (N, C, T, H, W) pixels, got shape {x.shape}")
  if x.dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
    rnd = lambda a: a.astype(x.dtype).astype(np.float32)  # round each op like the original
  else:
    rnd = lambda a: a
  y = rnd(x.astype(np.float32) + np.float32(1.0))
  y = rnd(y / np.float32(2.0))
  y = np.clip(y, np.float32(0.0), np.float32(1.0)) * np.float32(255.0)
  y = np.nan_to_num(y, nan=0.0).astype(np.uint8)
  perm = (0, 2, 3, 1) if x.ndim == 4 else (0, 2, 3, 4, 1)
  return np.ascontiguousarray(y.transpose(perm))


def _check_uint8(images: np.ndarray, what: str) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"{what} must be uint8 (use denorm_to_uint8 first), got {images.dtype}")
  return images


def _frame_to_pil(frame: np.ndarray) -> Image.Image:
  if frame.ndim == 3 and frame.shape[-1] == 1:
    frame = frame[..., 0]
  return Image.fromarray(frame)


def _written(path):
  """A local path as a `pathlib.Path` (what callers stat and open), a URI as an `epath.Path`."""
  return paths_lib.path(path) if paths_lib.is_uri(path) else Path(paths_lib.as_str(path))


def save_png(images, paths: Union[PathLike, Sequence[PathLike]]) -> list:
  """Writes uint8 (N, H, W, C) images to N PNG files (a single (H, W, C) to one path),
  local or `gs://...` (showo2_jax.paths).

  Parent folders are created. Returns the paths written (`pathlib.Path`; `epath.Path` for URIs).
  """
  images = _check_uint8(images, "images")
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
    if images.ndim == 3:
      images = images[None]
  if images.ndim != 4:
    raise ValueError(f"expected (N, H, W, C) images, got shape {images.shape}")
  if len(paths) != len(images):
    raise ValueError(f"{len(images)} images but {len(paths)} paths")
  written = []
  for image, path in zip(images, paths):
    paths_lib.makedirs(paths_lib.parent(path))
    with paths_lib.open(path, "wb") as f:
      _frame_to_pil(image).save(f, format="PNG")
    written.append(_written(path))
  return written


def mp4_backend() -> Optional[str]:
  """The imageio plugin able to write MP4 here ("FFMPEG" or "pyav"), or None."""
  if importlib.util.find_spec("imageio_ffmpeg") is not None:
    return "FFMPEG"
  if importlib.util.find_spec("av") is not None:
    return "pyav"
  return None


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
  """Pillow GIF (always available). Pillow merges consecutive identical frames."""
  pil = [_frame_to_pil(f) for f in frames]
  pil[0].save(path, format="GIF", save_all=True, append_images=pil[1:],
              duration=max(1, round(1000 / fps)), loop=0)


def _write_mp4(frames: np.ndarray, path: Path, fps: float, backend: str) -> None:
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  from showo2_jax.data.media import ffmpeg_subprocess  # pylint: disable=g-import-not-at-top
  if backend == "pyav":
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=int(round(fps)))
  else:
    with ffmpeg_subprocess():
      iio.imwrite(path, frames, plugin="FFMPEG", fps=fps)


def save_video(frames, path: PathLike, fps: float = 8.0):
  """Writes uint8 (T, H, W, C) frames, local or `gs://...`; returns the path actually
  written (`pathlib.Path`; `epath.Path` for URIs).

  A `.gif` path is written as GIF. Any other suffix (normally `.mp4`) needs an
  imageio video backend (imageio-ffmpeg or PyAV); without one, or if it fails, the
  video is written as GIF next to it (same name, `.gif`) and a warning is logged.
  """
  frames = _check_uint8(frames, "frames")
  if frames.ndim != 4:
    raise ValueError(f"expected (T, H, W, C) frames, got shape {frames.shape}")
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  path = _written(path)
  paths_lib.makedirs(paths_lib.parent(path))
  if path.suffix.lower() != ".gif":
    backend = mp4_backend()
    if backend is not None:
      try:
        with paths_lib.local_output(path) as local:
          _write_mp4(frames, Path(local), fps, backend)
        return path
      except Exception as e:  # pylint: disable=broad-except
        reason = f"the {backend} backend failed ({e})"
    else:
      reason = "imageio has no video backend here (install imageio-ffmpeg or av)"
    gif = path.with_suffix(".gif")
    logger.warning("cannot write %s: %s; writing GIF %s instead", path, reason, gif)
    path = gif
  with paths_lib.local_output(path) as local:
    _write_gif(frames, Path(local), fps)
  return path


def load_image(path: PathLike) -> np.ndarray:
  """Reads an image file as RGB uint8 (H, W, 3); alpha dropped, grey replicated.

  Raises ImageLoadError (a ValueError naming the file) for a missing, unreadable or
  corrupt file; decoding is forced here so truncated files fail now, not later.
  """
  try:
    with paths_lib.open(path, "rb") as f, Image.open(f) as image:
      image.load()
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except FileNotFoundError:
    raise ImageLoadError(path, "no such file") from None
  except IsADirectoryError:
    raise ImageLoadError(path, "is a directory") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageLoadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
