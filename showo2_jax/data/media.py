"""Reading images and videos from files or bytes; failures become `MediaError`.

Sources catch `MediaError` and count the sample as skipped, so one corrupt
file never stops a training run; anything else is a bug and propagates.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
from PIL import Image

from showo2_jax import paths
from showo2_jax.data import transforms

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class MediaError(Exception):
  """A missing, unreadable or unusable media file."""


_FORK_WARNING = r"os\.fork\(\) was called"
# Grain reads videos in threads, and `warnings.catch_warnings` is not thread-safe (a
# thread leaving the block restores the filters another thread's block had added),
# so the one fork that is always safe, `subprocess`'s fork + exec, is also filtered
# for the whole process, here at import, before any reader thread starts.
warnings.filterwarnings("ignore", message=_FORK_WARNING, category=RuntimeWarning,
                        module="subprocess")


@contextlib.contextmanager
def ffmpeg_subprocess():
  """Silences JAX's "os.fork() ... deadlock" warning around imageio-ffmpeg calls.

  imageio-ffmpeg starts ffmpeg with `subprocess.Popen`: the child execs at once and
  runs no Python, so the deadlock JAX warns about (a forked child using JAX's
  threads) cannot happen. Only that warning is filtered, only inside this block
  (and, from any thread, when `subprocess` raises it: see above).
  """
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_FORK_WARNING, category=RuntimeWarning)
    yield


def open_image(path: str | None = None, data: bytes | None = None) -> Image.Image:
  """Opens and fully decodes an image (so corruption surfaces here, not later)."""
  try:
    if data is None and paths.is_uri(path):  # gs://...: PIL reads local files or bytes
      data = paths.read_bytes(path)
    image = Image.open(io.BytesIO(data) if data is not None else path)
    image.load()
    return image
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f"cannot read image {path or '<bytes>'}: {e}") from e


def read_video_frames(path: str, num_frames: int) -> list[Image.Image]:
  """`num_frames` uniformly sampled frames (4.5) of a video file or frame folder.

  A folder holds one image per frame, in name order. Files are read with
  imageio, so the formats are whatever its installed plugins support (GIF via
  Pillow everywhere; mp4 needs imageio-ffmpeg or pyav).
  """
  try:
    if paths.isdir(path):
      names = sorted(n for n in paths.listdir(path) if n.lower().endswith(FRAME_SUFFIXES))
      picked = transforms.frame_indices(len(names), num_frames)
      return [open_image(paths.join(path, names[i])).convert("RGB") for i in picked]
    if paths.is_uri(path):  # ffmpeg reads local files: a temporary copy of the video
      with paths.local_copy(path) as local:
        return read_video_frames(local, num_frames)
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    with ffmpeg_subprocess():
      total = _count_frames(path)
      picked = transforms.frame_indices(total, num_frames)
      wanted, kept = set(picked.tolist()), {}
      for i, frame in enumerate(iio.imiter(path)):  # streamed: long videos stay small
        if i in wanted:
          kept[i] = Image.fromarray(np.asarray(frame)[..., :3]).convert("RGB")
    missing = [i for i in picked.tolist() if i not in kept]
    if missing:
      raise MediaError(f"cannot read video {path}: {total} frames announced, frame "
                       f"{missing[0]} could not be decoded")
    return [kept[i] for i in picked]
  except MediaError:
    raise
  except (OSError, ValueError, RuntimeError, KeyError) as e:
    raise MediaError(f"cannot read video {path}: {e}") from e


def _count_frames(path: str) -> int:
  """Frames in a video file. The ffmpeg plugin announces `inf` (it cannot know
  without decoding), so then the frames are counted: by imageio-ffmpeg's counter
  (ffmpeg decodes to null, no frame reaches Python) or, without it, by streaming."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  with ffmpeg_subprocess():
    n = iio.improps(path, index=None).shape[0]
    if np.isfinite(n):
      return int(n)
    try:
      import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
      return int(imageio_ffmpeg.count_frames_and_secs(path)[0])
    except (ImportError, RuntimeError, OSError):
      return sum(1 for _ in iio.imiter(path))
