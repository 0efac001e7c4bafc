"""An in-memory synthetic dataset with the real batch layout, for tests and demos.

It needs no download and no tokenizer, yet it is learnable, so a few hundred
steps show both losses falling:
- each of `num_classes` classes has a fixed caption (token ids) and a fixed
  latent pattern; a sample is its class pattern plus small noise;
- t2i rows (spec 4.2) ask for the latent given the caption (FM loss),
- captioning rows (spec 4.3, stage 1) ask for the caption given the latent (NTP),
- interleaved rows (spec 4.6) alternate captions and images (both losses),
- filled rows put the caption, the image, then text up to `seq_len` (no padding),
  every text position labelled and the image under the FM loss: the train batch of
  the original's `shared/bench/ref_bench.py` (~290 NTP targets and one image per row),
  so benchmarks against it time the same work.

With `pixel_shape` set, rows carry `pixel_values` in [-1, 1] instead of
latents (each class a fixed blocky picture plus noise), so the step must
encode them with the VAE, as it does for a pipeline reading raw images.

Row r of global batch n is drawn from its own generator seeded (seed, n, r), so
any process can build any slice of any batch: the iterator is random-access,
resumable from one integer, and independent of how many hosts read it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

IGNORE = -100
PAD, BOS, EOS, BOI, EOI, IMG_PAD, FLAG = 0, 1, 2, 3, 4, 5, 6
FIRST_TEXT_ID = 8


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  seq_len: int
  latent_shape: tuple            # (C, H, W)
  num_visual_tokens: int         # N + 1
  vocab_size: int
  num_classes: int = 8
  caption_len: int = 6
  t2i_rows: int = 6
  mmu_rows: int = 2
  interleaved_rows: int = 0
  filled_rows: int = 0
  max_images: int = 1            # M, slots per row
  seed: int = 0
  noise_scale: float = 0.3
  pixel_shape: Optional[tuple] = None   # (3, R, R): emit pixel_values instead of latents


class SyntheticSource:
  """Random-access batches: `rows(index, start, stop)` -> numpy dict, in the
  layout of showo2_jax.data.pipeline (latents (B*M, C, H, W) or pixel_values
  (B*M, 3, R, R), slot k = i*M + j)."""

  def __init__(self, spec: SyntheticSpec):
    if spec.vocab_size <= FIRST_TEXT_ID + 1:
      raise ValueError(f"vocab_size {spec.vocab_size} too small for synthetic captions")
    self.spec = spec
    rng = np.random.default_rng([spec.seed, 2**31 - 1])
    self.captions = rng.integers(FIRST_TEXT_ID, spec.vocab_size,
                                 (spec.num_classes, spec.caption_len)).astype(np.int32)
    self.patterns = rng.standard_normal((spec.num_classes,) + tuple(spec.latent_shape)).astype(np.float32)
    self.visual_key, self.visual_shape = "latents", tuple(spec.latent_shape)
    if spec.pixel_shape is not None:
      # 8x8-pixel blocks: structure a VAE with 8x downsampling keeps per latent.
      c, h, w = spec.pixel_shape
      coarse = rng.uniform(-0.8, 0.8, (spec.num_classes, c, -(-h // 8), -(-w // 8)))
      self.patterns = coarse.repeat(8, axis=2).repeat(8, axis=3)[:, :, :h, :w].astype(np.float32)
      self.visual_key, self.visual_shape = "pixel_values", (c, h, w)
    self._cycle = ["t2i"] * spec.t2i_rows + ["mmu"] * spec.mmu_rows + ["interleaved"] * spec.interleaved_rows
    self._cycle += ["filled"] * spec.filled_rows
    if not self._cycle:
      raise ValueError("synthetic data needs at least one of t2i_rows, mmu_rows, interleaved_rows, "
                       "filled_rows")

  def rows(self, index: int, start: int, stop: int) -> dict:
    out = [self._row(index, r) for r in range(start, stop)]
    batch = {k: np.stack([o[k] for o in out]) for k in out[0]}
    # Slots folded into the batch axis (B*M, C, H, W), as the real pipeline does.
    v = batch.pop("visual")
    batch[self.visual_key] = v.reshape((-1,) + v.shape[2:])
    return batch

  # ------------------------------------------------------------------ rows
  def _row(self, index: int, r: int) -> dict:
    s = self.spec
    rng = np.random.default_rng([s.seed, index, r])
    kind = self._cycle[r % len(self._cycle)]
    if kind == "interleaved":
      return self._interleaved(rng)
    c = int(rng.integers(s.num_classes))
    cap = list(self.captions[c])
    block = [IMG_PAD] * s.num_visual_tokens
    if kind == "t2i":
      tokens = [BOS] + cap + [BOI] + block + [EOI, EOS]
      labels = [IGNORE] * len(tokens)
      offset = len(cap) + 2
    elif kind == "filled":
      tokens = [BOS] + cap + [BOI] + block + [EOI]
      tail = max(s.seq_len - len(tokens), 0)
      tokens += list(rng.integers(FIRST_TEXT_ID, s.vocab_size, tail))
      labels = [t if t != IMG_PAD else IGNORE for t in tokens]
      offset = len(cap) + 2
    else:
      tokens = [BOS, BOI] + block + [EOI] + cap + [EOS]
      labels = [BOS, BOI] + [IGNORE] * len(block) + [EOI] + cap + [EOS]
      offset = 2
    return self._finish(tokens, labels, [(offset, c)], rng, is_und=kind == "mmu")

  def _interleaved(self, rng) -> dict:
    s = self.spec
    n_img = int(rng.integers(1, s.max_images + 1))
    tokens, labels, slots = [BOS, FLAG], [BOS, IGNORE], []
    for _ in range(n_img):
      c = int(rng.integers(s.num_classes))
      cap = list(self.captions[c])
      tokens += cap + [BOI]
      slots.append((len(tokens), c))
      tokens += [IMG_PAD] * s.num_visual_tokens + [EOI]
    tokens += [EOS]
    labels = tokens[:1] + [IGNORE] + tokens[2:]   # the flag is unlabelled; img_pad is labelled (10.11)
    return self._finish(tokens, labels, slots, rng, is_und=False)

  def _finish(self, tokens, labels, slots, rng, is_und) -> dict:
    s = self.spec
    if len(tokens) > s.seq_len:
      raise ValueError(f"synthetic row of {len(tokens)} tokens exceeds seq_len {s.seq_len}")
    pad = s.seq_len - len(tokens)
    tokens = np.asarray(tokens + [PAD] * pad, np.int32)
    labels = np.asarray(labels + [IGNORE] * pad, np.int32)
    positions = np.zeros((s.max_images, 2), np.int32)
    visual = np.zeros((s.max_images,) + self.visual_shape, np.float32)
    for j, (offset, c) in enumerate(slots):
      positions[j] = (offset, s.num_visual_tokens)
      noise = rng.standard_normal(self.visual_shape).astype(np.float32)
      visual[j] = self.patterns[c] + s.noise_scale * noise
    if s.pixel_shape is not None:
      visual = np.clip(visual, -1.0, 1.0)
    return dict(text_tokens=tokens, text_labels=labels, modality_positions=positions,
                image_masks=(tokens == IMG_PAD).astype(np.int32), visual=visual,
                is_und=np.asarray(is_und, np.int32))


class SyntheticIterator:
  """This process's rows [row_start, row_stop) of consecutive global batches.

  Its state is the next batch index; `get_state`/`set_state` use bytes so that
  grain's Orbax checkpoint handler stores it per process like a grain iterator.
  """

  def __init__(self, source: SyntheticSource, row_start: int, row_stop: int, index: int = 0):
    self.source, self.row_start, self.row_stop, self.index = source, row_start, row_stop, index

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.source.rows(self.index, self.row_start, self.row_stop)
    self.index += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"next_index": self.index}).encode()

  def set_state(self, state: bytes) -> None:
    self.index = int(json.loads(state)["next_index"])

  def start_prefetch(self) -> None:
    """grain's handler calls this after a restore; nothing is prefetched here."""
