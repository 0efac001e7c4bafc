"""One object for every inference task: weights, tokenizer, VAE and the layouts.

`Pipeline` turns user inputs (prompts, image files, questions) into the token
layouts of `data.sequences` and runs the cached samplers of this package:
  * `generate`  text -> image latents (also text -> video, image -> video);
  * `understand` / `understand_video`  image or video + question -> answer;
  * `mixed.generate_story` (in mixed.py) interleaved text and images.
Batches are padded to a fixed size (repeating the last item) so every batch of a
run shares one compilation; per-item noise comes from `fold_in(seed, index)`, so
an item's output does not depend on the batch size.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from showo2_jax.data import sequences, transforms
from showo2_jax.data import tokenizer as tokenizer_lib
from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import Showo2
from showo2_jax.flow import transport
from showo2_jax.convert import loading
from showo2_jax.sample import decode, media, progress, understanding, visual
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample.tokens import GREEDY, TokenSampling

log = logging.getLogger(__name__)

# The original's sequence lengths per resolution (spec 1.7); they bound the prompt.
MAX_SEQ_LEN = {432: 1024, 512: 1280, 1024: 4352}
DEFAULT_MAX_TEXT_LEN = 290
QWEN_MAX_POSITIONS = 32768
VAE_STRIDE = 8


class PromptTooLongError(ValueError):
  """A prompt does not fit the model's context."""


@dataclasses.dataclass(frozen=True)
class FlowSampling:
  """ODE settings. num_steps counts grid points (N points = N - 1 Euler steps)."""
  num_steps: int = 50
  guidance_scale: float = 7.5
  time_shifting_factor: float = 3.0
  method: str = "euler"

  def __post_init__(self):
    if self.num_steps < 2:
      raise ValueError(f"num_steps must be >= 2 (grid points), got {self.num_steps}")
    if not math.isfinite(self.guidance_scale):
      raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")
    if not (math.isfinite(self.time_shifting_factor) and self.time_shifting_factor > 0):
      raise ValueError(f"time_shifting_factor must be finite and > 0, got "
                       f"{self.time_shifting_factor}")
    transport.evaluations(self.method, self.num_steps)   # ValueError for an unknown method

  def evaluations(self) -> Optional[int]:
    """Model evaluations per image (None: adaptive)."""
    return transport.evaluations(self.method, self.num_steps)


def _chunks(items: Sequence[Any], size: int):
  """Fixed-size batches; the last is padded with its last item. Yields (batch, n_real)."""
  for i in range(0, len(items), size):
    batch = list(items[i:i + size])
    yield batch + [batch[-1]] * (size - len(batch)), len(batch)


class Pipeline:
  """Show-o2 inference on one device (or whatever jit places it on)."""

  def __init__(self, config: Showo2Config, params, tokenizer, special: tokenizer_lib.SpecialTokens,
               vae: Optional[loading.Vae] = None, *, resolution: Optional[int] = None,
               understanding_resolution: Optional[int] = None,
               max_seq_len: Optional[int] = None, max_context: int = QWEN_MAX_POSITIONS,
               bucket_multiple: int = 32):
    self.config = config
    self.model = Showo2(config, empty_slots_overwrite_bos=False)
    self.params = params
    self.tokenizer = tokenizer
    self.special = special
    self.vae = vae
    # Wan2.1 downsamples 8x; a VAE of another depth (tiny_shapes' 4x) says so itself.
    self.vae_stride = vae.stride if vae is not None else VAE_STRIDE
    stride = self.vae_stride * config.patch_size
    # Generation at the checkpoint's resolution (432 / 512 / 1024 px); understanding at
    # the semantic layers' native grid (27 x 16 = 432 px), as the original's MMU scripts
    # (which add the 27x27 position table without resizing it). `resolution` sets both.
    self.resolution = resolution or config.image_latent_height * stride
    self.understanding_resolution = (understanding_resolution or resolution
                                     or config.siglip.position_grid * stride)
    for r in (self.resolution, self.understanding_resolution):
      if r % stride:
        raise ValueError(f"resolution {r} must be a multiple of {stride}")
    self.max_seq_len = max_seq_len or MAX_SEQ_LEN.get(
        self.resolution, self.image_block + 4 + DEFAULT_MAX_TEXT_LEN)
    self.max_context = max_context
    self.bucket_multiple = bucket_multiple
    self.chat = sequences.ChatIds.build(tokenizer)

  @classmethod
  def load(cls, checkpoint: str, tokenizer: str, vae: Optional[str] = None, dtype: str = "float32",
           **kw) -> "Pipeline":
    config, params = loading.load_showo2(checkpoint, dtype)
    tok, special = loading.load_tokenizer(tokenizer)
    if len(tok) > config.llm.vocab_size:
      raise ValueError(f"the tokenizer has {len(tok)} tokens but the model only "
                       f"{config.llm.vocab_size} embeddings: wrong tokenizer for this checkpoint?")
    if kw.get("resolution") is None:
      kw["resolution"], why = loading.default_resolution(checkpoint, config)
      kw.setdefault("understanding_resolution", None)
      log.info("generation at %d px (%s; --resolution overrides)", kw["resolution"], why)
      if kw["understanding_resolution"] is None:
        # Understanding keeps the semantic layers' grid, whatever generation uses.
        kw["understanding_resolution"] = config.siglip.position_grid * VAE_STRIDE * config.patch_size
    return cls(config, params, tok, special, loading.load_vae(vae) if vae else None, **kw)

  # ------------------------------------------------------------------ geometry
  @property
  def latent_size(self) -> int:
    return self.resolution // self.vae_stride

  @property
  def num_image_tokens(self) -> int:
    return (self.latent_size // self.config.patch_size) ** 2

  @property
  def image_block(self) -> int:
    """Visual block length of one image: N patches plus the time slot."""
    return self.num_image_tokens + 1

  @property
  def understanding_block(self) -> int:
    """Visual block length of one understanding image (730 at 432 px)."""
    side = self.understanding_resolution // self.vae_stride // self.config.patch_size
    return side * side + 1

  def latent_shape(self, latent_frames: int = 1) -> tuple[int, ...]:
    s, c = self.latent_size, self.config.latent_channels
    return (c, s, s) if latent_frames == 1 else (c, latent_frames, s, s)

  def _need_vae(self) -> loading.Vae:
    if self.vae is None:
      raise ValueError("this needs the Wan VAE: pass its checkpoint (--vae)")
    return self.vae

  # ------------------------------------------------------------------- prompts
  @property
  def max_text_len(self) -> int:
    """The original's prompt budget at this resolution (290 at 432 px; spec 1.7)."""
    return sequences.t2i_max_text_len(self.max_seq_len, self.image_block)

  def prompt_ids(self, prompts: Sequence[str], truncate: bool = False) -> list[list[int]]:
    """Token ids per prompt, checked against `max_text_len` (videos use the image budget)."""
    limit = self.max_text_len
    out = []
    for p in prompts:
      ids = tokenizer_lib.encode(self.tokenizer, p)
      if len(ids) > limit:
        if not truncate:
          raise PromptTooLongError(
              f"prompt of {len(ids)} tokens is longer than the context allows ({limit} text "
              f"tokens at max_seq_len {self.max_seq_len}): '{p[:60]}...' (shorten it, or truncate)")
        ids = ids[:limit]
      out.append(ids)
    return out

  # ---------------------------------------------------------------- generation
  def generate(self, prompts: Sequence[str], sampling: FlowSampling = FlowSampling(), *,
               seed: int = 0, batch_size: int = 1, num_frames: int = 1,
               condition_image: Optional[np.ndarray] = None, truncate: bool = False,
               show_progress: bool = False) -> np.ndarray:
    """Prompts -> final latents (n, C, H, W), or (n, C, T', H, W) for videos.

    num_frames counts pixel frames (1 + 4k; T' = 1 + k latent frames).
    condition_image (3, R, R) in [-1, 1] makes it image-to-video: its latent is
    latent frame 0 and is not denoised (the original's first_frame_as_cond).
    """
    if (num_frames - 1) % 4:
      raise ValueError(f"num_frames must be 1 + 4k (1, 5, 9, 17, ...), got {num_frames}")
    latent_frames = 1 + (num_frames - 1) // 4
    if condition_image is not None and latent_frames < 2:
      raise ValueError("image-to-video needs num_frames >= 5 (two latent frames)")
    shape = self.latent_shape(latent_frames)
    ids = self.prompt_ids(prompts, truncate)
    cond_latent = None
    if condition_image is not None:
      cond_latent = self._need_vae().encode(np.asarray(condition_image)[None])[0]
    evals = sampling.evaluations()
    n_batches = math.ceil(len(prompts) / batch_size)
    key = jax.random.PRNGKey(seed)
    outputs = []
    with progress.bar(None if evals is None else evals * n_batches, "denoising", show_progress):
      for start, (batch, n_real) in zip(range(0, len(ids), batch_size), _chunks(ids, batch_size)):
        noise = jnp.stack([transport.initial_noise(jax.random.fold_in(key, start + i), shape)
                           for i in range(len(batch))])
        if cond_latent is not None:
          noise = noise.at[:, :, 0].set(cond_latent)
        out = self.sample_latents(batch, noise, sampling, first_frame_as_cond=cond_latent is not None,
                                  show_progress=show_progress)
        outputs.append(np.asarray(out)[:n_real])
    return np.concatenate(outputs)

  def sample_latents(self, prompt_ids: Sequence[Sequence[int]], noise, sampling: FlowSampling, *,
                     sources=None, width: Optional[int] = None, first_frame_as_cond: bool = False,
                     show_progress: bool = False) -> jax.Array:
    """One batch: token ids per row + noise (B, C, [T,] H, W) -> final latents (B, ...).

    Rows are `[bos] ids [boi]`, CFG null rows `[bos boi]`. With `sources`
    (B, C, H, W) clean latents (image editing), each row is
    `[bos] [boi] source [eoi] ids [boi]`: the source image is a clean visual
    block (t = 1) before the instruction, and the null row keeps the source
    and drops the instruction. `width` fixes the aligned prefix width (the
    server's length buckets); default: rounded up to `bucket_multiple`.
    """
    sp = self.special
    use_cfg = sampling.guidance_scale != 0
    context, placement, ctx_vis, ctx_te = (), None, None, None
    if sources is not None:
      context = sequences.visual_block(sp, self.image_block)
      n = len(prompt_ids) * (2 if use_cfg else 1)
      placement = np.tile(np.asarray([[[2, self.image_block]]], np.int32), (n, 1, 1))
      ctx_vis, ctx_te = understanding.visual_tokens(
          self.model, self.params, jnp.asarray(sources),
          jnp.ones((len(prompt_ids),), jnp.float32))
      if use_cfg:
        ctx_vis = jnp.concatenate([ctx_vis, ctx_vis])
        ctx_te = jnp.concatenate([ctx_te, ctx_te])
    rows = sequences.t2i_prompt_rows(prompt_ids, sp, context=context, cfg=use_cfg)
    longest = max(len(r) for r in rows)
    if longest + self.image_block > self.max_context:
      raise PromptTooLongError(f"prompt of {longest} tokens does not fit the context")
    a = prefix_lib.align(rows, sp.pad, placement=placement, multiple=self.bucket_multiple,
                         width=width)
    grid = transport.time_grid(sampling.num_steps, sampling.time_shifting_factor)
    return visual.sample_latents(
        self.model, self.params, a.tokens, a.shift, a.lengths, a.placement, a.attention,
        ctx_vis, ctx_te, jnp.asarray(noise), grid, sampling.guidance_scale, method=sampling.method,
        use_cfg=use_cfg, first_frame_as_cond=first_frame_as_cond, show_progress=show_progress)

  def edit(self, sources: Sequence[Any], instructions: Sequence[str],
           sampling: FlowSampling = FlowSampling(), *, seed: int = 0, batch_size: int = 1,
           truncate: bool = False, show_progress: bool = False) -> np.ndarray:
    """Image editing: (source image, instruction) -> edited latents (n, C, H, W).

    The source (PIL or uint8 HWC, center-cropped to the generation resolution)
    is encoded by the VAE and placed as a clean visual block before the
    instruction; the flow head generates the target after it. Noise per item
    is `fold_in(seed, index)`, as `generate`.
    """
    if len(sources) != len(instructions):
      raise ValueError(f"{len(sources)} source images but {len(instructions)} instructions")
    ids = self.prompt_ids(instructions, truncate)
    key = jax.random.PRNGKey(seed)
    shape = self.latent_shape()
    outputs = []
    items = list(zip(sources, ids))
    with progress.bar(None, "denoising", show_progress):
      for start, (batch, n_real) in zip(range(0, len(items), batch_size),
                                        _chunks(items, batch_size)):
        pixels = np.stack([self.image_pixels(src) for src, _ in batch])
        latents = self._need_vae().encode(pixels)
        noise = jnp.stack([transport.initial_noise(jax.random.fold_in(key, start + i), shape)
                           for i in range(len(batch))])
        out = self.sample_latents([r for _, r in batch], noise, sampling, sources=latents,
                                  show_progress=show_progress)
        outputs.append(np.asarray(out)[:n_real])
    return np.concatenate(outputs)

  def decode(self, latents) -> np.ndarray:
    """Latents -> uint8 images (n, H, W, 3) or videos (n, T, H, W, 3)."""
    return media.denorm_to_uint8(np.asarray(self._need_vae().decode(latents)))

  # ------------------------------------------------------------- understanding
  def encode_pixels(self, pixels: np.ndarray, rng=None) -> jax.Array:
    """(K, 3, R, R) in [-1, 1] -> clean latents (K, C, h, w) (rng: sample the posterior)."""
    return self._need_vae().encode(pixels, rng)

  def image_pixels(self, image, resolution: Optional[int] = None) -> np.ndarray:
    """An RGB image (PIL or uint8 HWC) -> (3, R, R) in [-1, 1], center-cropped as the
    original's scripts do (spec 7.5). R defaults to the generation resolution."""
    if not isinstance(image, Image.Image):
      image = Image.fromarray(np.asarray(image, np.uint8))
    return transforms.image_transform(image.convert("RGB"), resolution or self.resolution)

  def check_questions(self, questions: Sequence[str], parity_mode: bool = False,
                      truncate: bool = False, num_images: Optional[Sequence[int]] = None) -> None:
    """Refuses questions the prompt layout would cut (PromptTooLongError).

    The training template (not parity_mode) keeps the first 512 tokens of
    "<image>\n" + question, as the original's MMU datasets truncate their sources
    (spec 4.3); a longer question is an error unless `truncate`. In parity_mode
    the whole question goes in and only the context bounds it.
    """
    if parity_mode or truncate:
      return
    for q, k in zip(questions, num_images or [1] * len(questions)):
      n = len(tokenizer_lib.encode(self.tokenizer, sequences.with_image_markers(q, k)))
      if n > sequences.MMU_SOURCE_MAX_LEN:
        raise PromptTooLongError(
            f"question of {n} tokens is longer than the {sequences.MMU_SOURCE_MAX_LEN} the "
            f"understanding prompt keeps: '{q[:60]}...' (shorten it, or pass --truncate to "
            f"keep its first {sequences.MMU_SOURCE_MAX_LEN} tokens)")

  def _check_context(self, rows, max_new_tokens):
    longest = max(r["prompt_length"] for r in rows)
    if longest + max_new_tokens > self.max_context:
      raise PromptTooLongError(
          f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the context of "
          f"{self.max_context} positions")

  def _answer(self, rows, vis, sampling, max_new_tokens, rng, show_progress):
    self._check_context(rows, max_new_tokens)
    gen = understanding.answer_rows(
        self.model, self.params, rows, vis, pad_id=self.special.pad, stop_ids=[self.special.eos],
        max_new_tokens=max_new_tokens, sampling=sampling, rng=rng,
        bucket_multiple=self.bucket_multiple, show_progress=show_progress)
    ids = decode.trim(np.asarray(gen.tokens), [self.special.eos])
    return [self.tokenizer.decode(i, skip_special_tokens=True) for i in ids]

  def understand(self, images: Sequence[Any], questions: Sequence[str], *,
                 sampling: TokenSampling = GREEDY, max_new_tokens: int = 300,
                 parity_mode: bool = False, seed: int = 0, batch_size: int = 1,
                 sample_posterior: bool = False, truncate: bool = False,
                 show_progress: bool = False) -> list[str]:
    """One answer per (images, question) pair.

    images[i] is one image (PIL or uint8 HWC) or a list of images: a list asks
    its question about all of them at once, one visual block per image in the
    LLaVA-OneVision multi-image layout (`sequences.with_image_markers`: images
    first, or where the question's `<image>` markers say). Answers do not
    depend on batch_size or on the other items of a batch. Raises
    PromptTooLongError for a question over 512 tokens unless `truncate`
    (see `check_questions`).
    """
    if len(images) != len(questions):
      raise ValueError(f"{len(images)} images but {len(questions)} questions")
    image_lists = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
    if any(not ims for ims in image_lists):
      raise ValueError("an item with no image: pass at least one image per question")
    self.check_questions(questions, parity_mode, truncate, [len(ims) for ims in image_lists])
    vae_key, text_key = jax.random.split(jax.random.PRNGKey(seed))
    answers = []
    items = list(zip(image_lists, questions))
    n_batches = math.ceil(len(items) / batch_size)
    # Total: the most tokens it can take; a batch that stops at eos jumps to its end.
    with progress.bar(max_new_tokens * n_batches, "decoding", show_progress) as bar:
      for b_idx, (start, (batch, n_real)) in enumerate(
          zip(range(0, len(items), batch_size), _chunks(items, batch_size))):
        rng = jax.random.fold_in(vae_key, start) if sample_posterior else None
        vis, m = self.visual_blocks([ims for ims, _ in batch], rng)
        rows = [self.pad_slots(sequences.understanding_prompt(
            self.tokenizer, q, self.special, self.chat, num_visual_tokens=self.understanding_block,
            parity_mode=parity_mode, num_images=len(ims)), m) for ims, q in batch]
        answers += self._answer(rows, vis, sampling, max_new_tokens,
                                jax.random.fold_in(text_key, start), show_progress)[:n_real]
        progress.advance_to(bar, (b_idx + 1) * max_new_tokens)
    return answers

  def visual_blocks(self, image_lists: Sequence[Sequence[Any]], rng=None,
                    num_slots: Optional[int] = None) -> tuple[jax.Array, int]:
    """Images per row -> (visual (B*M, 1 + N, D), M): clean blocks, row-major slots.

    M = num_slots or the most images of a row; a row's missing slots are zeros
    (their positions are the empty (0, 0), so nothing reads them).
    """
    m = num_slots or max(len(ims) for ims in image_lists)
    flat = [im for ims in image_lists for im in ims]
    pixels = np.stack([self.image_pixels(im, self.understanding_resolution) for im in flat])
    blocks = understanding.image_tokens(self.model, self.params, self.encode_pixels(pixels, rng))
    index, k = [], 0
    for ims in image_lists:
      index += list(range(k, k + len(ims))) + [-1] * (m - len(ims))
      k += len(ims)
    index = np.asarray(index, np.int32)
    gathered = jnp.take(blocks, jnp.asarray(np.maximum(index, 0)), axis=0)
    return jnp.where(jnp.asarray(index >= 0)[:, None, None], gathered, 0), m

  @staticmethod
  def pad_slots(row: dict, num_slots: int) -> dict:
    """A prompt row's (K, 2) positions padded with empty slots to (num_slots, 2)."""
    for key in ("modality_positions", "attention_modality_positions"):
      pos = row[key]
      row[key] = np.concatenate([pos, np.zeros((num_slots - len(pos), 2), np.int32)])
    return row

  def understand_video(self, frames: Sequence[Any], question: str, *,
                       sampling: TokenSampling = GREEDY, max_new_tokens: int = 300,
                       parity_mode: bool = False, seed: int = 0, sample_posterior: bool = False,
                       truncate: bool = False, show_progress: bool = False) -> str:
    """frames: PIL images or uint8 HWC arrays, already sampled from the video.

    Each frame is letterboxed (resize_and_pad) and encoded as its own image, as
    the original's video script does (spec 4.5). Question length: as `understand`.
    """
    self.check_questions([question], parity_mode, truncate)
    pixels = np.stack([transforms.to_pixels(transforms.resize_and_pad(
        f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, np.uint8)),
        self.understanding_resolution)) for f in frames])
    vae_key, text_key = jax.random.split(jax.random.PRNGKey(seed))
    latents = self.encode_pixels(pixels, vae_key if sample_posterior else None)
    side = self.understanding_resolution // self.vae_stride // self.config.patch_size
    pooled = understanding.pooled_side(side)
    vis = understanding.video_tokens(self.model, self.params, latents, pooled)
    row = sequences.video_understanding_prompt(
        self.tokenizer, question, self.special, self.chat, num_frames=len(frames),
        tokens_per_frame=pooled * pooled, parity_mode=parity_mode,
        parity_block_length=self.understanding_block if parity_mode else None)
    with progress.bar(max_new_tokens, "decoding", show_progress) as bar:
      answer = self._answer([row], vis, sampling, max_new_tokens, text_key, show_progress)[0]
      progress.advance_to(bar, max_new_tokens)
      return answer
