"""Tasks: one record -> one training row (layout plus its visual inputs).

A task is a picklable callable `task(record, rng) -> row | Skipped`, run in
Grain workers through `MapDataset.random_map`, so its randomness (caption
dropout, the VIST window) is a pure function of the seed and the record's
index: resumed runs see the same rows.

The visual inputs of a row have a fixed slot axis M (1, or 4 for VIST):
`pixel_values` (M, 3, R, R) float32 in [-1, 1] (video: (M, 3, F, R, R)), or,
when the record carries precomputed latents (`latents`, optionally
`latents_logvar`, each (n, C, ...)), those instead. Empty slots are zeros.

Pixels come from the `*_pixels` loaders below, which need no tokenizer, so
latent precomputation applies exactly the transforms and filters training does.

A sample that cannot be used becomes `Skipped` instead of raising: "bad"
(missing or corrupt media, a layout that does not fit) is logged; "filtered"
(below min_res, an unsupported colour mode, an empty story) is normal
filtering, as in the original.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading

import numpy as np

from showo2_jax.data import media
from showo2_jax.data import sequences, sources
from showo2_jax.data import tokenizer as tokenizer_lib
from showo2_jax.data import transforms

_log = logging.getLogger(__name__)
_MAX_LOGGED = 20
_logged = [0]
_log_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Skipped:
  kind: str       # "bad" or "filtered"
  reason: str = ""


class Filtered(Exception):
  """Raised by pixel loaders for samples the data filters reject."""


class BadRecord(Exception):
  """An annotation record the source marked bad (`sources.bad_record`: file:line)."""


def check_record(record) -> None:
  """Raises BadRecord for a source's bad-record marker."""
  if sources.is_bad(record):
    raise BadRecord(record[sources.BAD])


def is_visual_key(key: str) -> bool:
  """Fields with one entry per visual slot (folded into the batch axis)."""
  return key == "pixel_values" or key == "latents" or key.startswith("latents_")


def num_visual_tokens(resolution: int, latent_frames: int = 1, vae_stride: int = 8,
                      patch_size: int = 2) -> int:
  """Visual block length: patches of every latent frame plus the time slot."""
  side = resolution // vae_stride // patch_size
  return latent_frames * side * side + 1


# What a sample can fail with without it being a bug in our code.
DATA_ERRORS = (Filtered, BadRecord, media.MediaError, sequences.LayoutError)


def as_skipped(error: Exception) -> Skipped:
  """A data error as `Skipped`, logging the first bad samples, then a trickle."""
  if isinstance(error, Filtered):
    return Skipped("filtered", str(error))
  with _log_lock:
    _logged[0] += 1
    n = _logged[0]
  if n <= _MAX_LOGGED or n % 1000 == 0:
    _log.warning("skipping bad sample (%d so far in this process): %s", n, error)
  return Skipped("bad", str(error))


# ----------------------------------------------------------------------------- pixel loaders

def image_text_pixels(record: dict, resolution: int, min_res=None) -> np.ndarray:
  """Stage-1 images: min_res filter, colour-mode handling, center crop (7.2, 7.5)."""
  image = media.open_image(record.get("path"), record.get("image_bytes"))
  if not transforms.meets_min_resolution(image, min_res):
    raise Filtered(f"{image.size} below min_res {tuple(min_res)}")
  rgb = transforms.to_rgb_or_none(image)
  if rgb is None:
    raise Filtered(f"unsupported image mode {image.mode}")
  return transforms.image_transform(rgb, resolution)[None]


def llava_pixels(record: dict, resolution: int) -> np.ndarray:
  """LLaVA images letterboxed (4.3), (n, 3, R, R); text-only samples get a black image.

  "image" may be a list (LLaVA-OneVision multi-image samples), in `<image>` order.
  """
  if "image" not in record and "image_bytes" not in record:
    return transforms.black_pixels(resolution)[None]
  if isinstance(record.get("image"), (list, tuple)):
    return np.stack([transforms.to_pixels(transforms.resize_and_pad(
        media.open_image(p).convert("RGB"), resolution)) for p in record["image"]])
  image = media.open_image(record.get("image"), record.get("image_bytes")).convert("RGB")
  return transforms.to_pixels(transforms.resize_and_pad(image, resolution))[None]


def vist_pixels(record: dict, resolution: int) -> np.ndarray:
  """Every image of a story, center-cropped (4.6)."""
  return np.stack([transforms.image_transform(media.open_image(p).convert("RGB"), resolution)
                   for p in record["images"]])


def edit_pixels(record: dict, resolution: int) -> np.ndarray:
  """(2, 3, R, R): the source, then the target, both center-cropped (as T2I images)."""
  return np.stack([transforms.image_transform(media.open_image(record[k]).convert("RGB"),
                                              resolution) for k in ("source", "target")])


def video_pixels(record: dict, resolution: int, num_frames: int) -> np.ndarray:
  """(1, 3, F, R, R): uniformly sampled frames, each letterboxed (4.5)."""
  frames = media.read_video_frames(record["path"], num_frames)
  return np.stack([transforms.to_pixels(transforms.resize_and_pad(f, resolution))
                   for f in frames], axis=1)[None]


def pixel_loader(kind: str, resolution: int, *, min_res=None, num_frames: int = 17):
  """The pixel loader of a record kind: 'image_text', 'llava', 'vist', 'video_text'."""
  loaders = {
      "image_text": functools.partial(image_text_pixels, resolution=resolution, min_res=min_res),
      "llava": functools.partial(llava_pixels, resolution=resolution),
      "vist": functools.partial(vist_pixels, resolution=resolution),
      "video_text": functools.partial(video_pixels, resolution=resolution, num_frames=num_frames),
      "edit": functools.partial(edit_pixels, resolution=resolution),
  }
  if kind not in loaders:
    raise ValueError(f"unknown record kind {kind!r}; one of {sorted(loaders)}")
  return functools.partial(_checked_pixels, load=loaders[kind])


def _checked_pixels(record: dict, load) -> np.ndarray:
  check_record(record)
  return load(record)


# ----------------------------------------------------------------------------- tasks

class Task:
  """Common flow: pick what the row uses, get its visuals, lay it out."""
  is_und = False
  num_slots = 1

  def __init__(self, tokenizer, special, *, resolution: int, max_seq_len: int,
               vae_stride: int = 8, patch_size: int = 2):
    self.tokenizer = tokenizer_lib.fast_encoder(tokenizer)
    self.special = special
    self.resolution = resolution
    self.max_seq_len = max_seq_len
    # The visual block must have as many slots as the model makes patches of the
    # VAE's latents: (resolution / vae_stride / patch_size)^2 + the time slot.
    self.vae_stride, self.patch_size = int(vae_stride), int(patch_size)
    self.num_visual_tokens = num_visual_tokens(resolution, vae_stride=self.vae_stride,
                                               patch_size=self.patch_size)

  def select(self, record: dict, rng: np.random.Generator) -> dict:
    """The part of the record this row uses (e.g. a VIST window)."""
    del rng
    return record

  def load_pixels(self, record: dict) -> np.ndarray:
    """(n, 3, ...) pixels of every image of the (selected) record."""
    raise NotImplementedError

  def layout(self, record: dict, rng: np.random.Generator) -> dict:
    raise NotImplementedError

  def __call__(self, record: dict, rng: np.random.Generator):
    try:
      check_record(record)
      record = self.select(record, rng)
      visuals = {k: np.asarray(v, np.float32) for k, v in record.items() if is_visual_key(k)}
      if "latents" not in visuals:
        visuals = {"pixel_values": self.load_pixels(record)}
      row = self.layout(record, rng)
    except DATA_ERRORS as e:
      return as_skipped(e)
    for key, value in visuals.items():
      row[key] = _to_slots(value, self.num_slots)
    row["is_und"] = np.asarray(self.is_und)
    return row


def _to_slots(visuals: np.ndarray, num_slots: int) -> np.ndarray:
  """First `num_slots` visuals, zero-padded to exactly that many."""
  visuals = visuals[:num_slots]
  pad = np.zeros((num_slots - len(visuals),) + visuals.shape[1:], np.float32)
  return np.concatenate([visuals, pad])


class ImageTextTask(Task):
  """Stage-1 image-text pairs as text-to-image rows or captioning rows (4.2, 4.3).

  Generation: caption cleaned (newlines, boilerplate) and dropped to '' with
  `cond_dropout_prob`. Captioning: newlines removed only, never dropped.
  Images below `min_res` (height, width) or in an unsupported mode are filtered.
  """

  def __init__(self, tokenizer, special, *, resolution, max_seq_len, captioning=False,
               cond_dropout_prob=0.1, min_res=None, **grid):
    super().__init__(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len, **grid)
    self.is_und = captioning
    self.cond_dropout_prob = 0.0 if captioning else cond_dropout_prob
    self.load_pixels = pixel_loader("image_text", resolution, min_res=min_res)
    self.max_text_len = sequences.t2i_max_text_len(max_seq_len, self.num_visual_tokens)

  def layout(self, record, rng):
    text = sequences.clean_caption(record["prompt"], strip_boilerplate=not self.is_und)
    text = transforms.drop_caption(text, self.cond_dropout_prob, rng)
    ids = tokenizer_lib.encode(self.tokenizer, text, self.max_text_len)
    build = sequences.captioning_row if self.is_und else sequences.t2i_row
    return build(ids, self.special, num_visual_tokens=self.num_visual_tokens,
                 max_seq_len=self.max_seq_len)


class VideoTextTask(ImageTextTask):
  """Video-text pairs laid out like text-to-image (or captioning) with one clip slot.

  Not in the released training code (video generation is config-only there);
  this follows spec 1.7 / 2.5: `num_frames` = 1 + 4k frames, letterboxed
  (4.5), a block of one time slot plus (1 + (F-1)/4) * N patches between
  boi/eoi. `pixel_values` is (1, 3, F, R, R), the VAE's NCTHW layout.
  """

  def __init__(self, tokenizer, special, *, resolution, max_seq_len, num_frames=17,
               captioning=False, cond_dropout_prob=0.1, **grid):
    if (num_frames - 1) % 4:
      raise ValueError(f"num_frames must be 1 + 4k for the Wan VAE, got {num_frames}")
    super().__init__(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len,
                     captioning=captioning, cond_dropout_prob=cond_dropout_prob, **grid)
    self.load_pixels = pixel_loader("video_text", resolution, num_frames=num_frames)
    self.num_visual_tokens = num_visual_tokens(resolution, latent_frames=1 + (num_frames - 1) // 4,
                                               vae_stride=self.vae_stride,
                                               patch_size=self.patch_size)
    self.max_text_len = sequences.t2i_max_text_len(max_seq_len, self.num_visual_tokens)


class LlavaTask(Task):
  """Stage-2 LLaVA conversations (4.3): letterboxed image, chat layout.

  `stage` as in the original configs: 'pre-training', 'pre-training-1-5'
  (no system prompt, questions with images dropped) or 'tuning'.
  Text-only samples carry a black image in an empty (0, 0) slot.
  """
  is_und = True

  def __init__(self, tokenizer, special, *, resolution, max_seq_len, stage="tuning",
               system_prompt=sequences.DEFAULT_SYSTEM_PROMPT, max_num_images=1, **grid):
    super().__init__(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len, **grid)
    self.stage = stage
    self.num_slots = max_num_images
    self.chat = sequences.ChatIds.build(tokenizer, system_prompt)
    self.load_pixels = pixel_loader("llava", resolution)

  def layout(self, record, rng):
    return sequences.llava_row(self.tokenizer, record["conversations"], self.special,
                               stage=self.stage, chat=self.chat,
                               num_visual_tokens=self.num_visual_tokens,
                               max_seq_len=self.max_seq_len, max_num_images=self.num_slots)


class EditTask(Task):
  """Image editing triples {"source", "target", "instruction"} (`sequences.edit_row`).

  Two slots: the source (clean context, t = 1, no loss) and the target
  (flow-matching loss). The instruction is dropped to '' with
  `cond_dropout_prob`, which trains the null row of editing CFG (source kept).
  """

  def __init__(self, tokenizer, special, *, resolution, max_seq_len, cond_dropout_prob=0.1,
               **grid):
    super().__init__(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len, **grid)
    self.num_slots = 2
    self.cond_dropout_prob = cond_dropout_prob
    self.load_pixels = pixel_loader("edit", resolution)
    self.max_text_len = sequences.edit_max_text_len(max_seq_len, self.num_visual_tokens)

  def layout(self, record, rng):
    text = transforms.drop_caption(record["instruction"].replace("\n", " "),
                                   self.cond_dropout_prob, rng)
    ids = tokenizer_lib.encode(self.tokenizer, text, self.max_text_len)
    return sequences.edit_row(ids, self.special, num_visual_tokens=self.num_visual_tokens,
                              max_seq_len=self.max_seq_len)


class VistTask(Task):
  """Interleaved stories (4.6): a random window of up to 4 (caption, image) pairs.

  Images are center-cropped; captions carry no dropout (the original ignores
  its cond_dropout_prob here); the flag text's labels are ignored.
  """

  def __init__(self, tokenizer, special, *, resolution, max_seq_len, max_num_images=4,
               flag=sequences.VIST_FLAG, label_image_pads=True, **grid):
    super().__init__(tokenizer, special, resolution=resolution, max_seq_len=max_seq_len, **grid)
    self.num_slots = max_num_images
    self.label_image_pads = label_image_pads
    self.load_pixels = pixel_loader("vist", resolution)
    self.flag_ids = tokenizer_lib.encode(tokenizer, flag)
    self.max_text_len = sequences.interleaved_max_text_len(
        max_seq_len, len(self.flag_ids), self.num_visual_tokens, max_num_images)

  def select(self, record, rng):
    n = len(record["captions"])
    if n == 0:
      raise Filtered("story without images")
    start = sequences.vist_window_start(n, self.num_slots, rng)
    window = slice(start, start + self.num_slots)
    picked = {k: v[window] for k, v in record.items()
              if k in ("images", "captions") or is_visual_key(k)}
    return {**record, **picked}

  def layout(self, record, rng):
    caps = [tokenizer_lib.encode(self.tokenizer, c, self.max_text_len) for c in record["captions"]]
    return sequences.interleaved_row(
        caps, self.special, flag_ids=self.flag_ids, num_visual_tokens=self.num_visual_tokens,
        max_seq_len=self.max_seq_len, max_num_images=self.num_slots,
        label_image_pads=self.label_image_pads)
