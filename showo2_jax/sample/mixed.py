"""Mixed-modality generation: text until the model opens an image, the image, repeat.

As the original's `inference_mixed_modality.py` (spec 4.7), for a fixed number of
rounds; each round
  1. generates text (temperature 1, no truncation by default) conditioned on the
     whole story so far, its earlier images included, until `<|im_end|>` or
     `<|vision_start|>` (or the token budget);
  2. if it stopped on `<|vision_start|>`, generates an image by flow matching
     conditioned on everything before it (CFG against the null prompt
     `[bos, boi]`), and appends `[boi] block [eoi]` to the story.
Round 0 uses the given guidance scale, later rounds `later_guidance_scale` (the
original hard-codes 5.0).

Differences from the original, on purpose (see docs/inference.md):
  * Clean context images enter the text rounds with t = 1, as in training and as
    the original's own image rounds do; the original's text rounds pass t = 0
    (bug 10.5). `context_t=0.0` reproduces it.
  * The story is kept as token ids, not decoded and re-tokenized each round, and
    the null prompt is `[bos, boi]` instead of the original's string surgery (its
    extra text sits after the null block and cannot influence it, 10.15).
  * Everything is cached: one prefill per round, then cached text decoding, and
    the image's prefix (story + earlier images) is computed once per image, not
    once per ODE step; earlier images are never re-denoised (they are context,
    the original zeroes their velocity instead).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.data import sequences
from showo2_jax.data import tokenizer as tokenizer_lib
from showo2_jax.flow import transport
from showo2_jax.sample import decode, progress, understanding, visual
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample.pipeline import FlowSampling, Pipeline, PromptTooLongError
from showo2_jax.sample.tokens import TokenSampling

STORY_SAMPLING = TokenSampling(temperature=1.0)


@dataclasses.dataclass
class Story:
  """texts: each round's generated text (special tokens kept, as the original logs
  its responses); latents: the images in order (C, H, W); token_ids: the story."""
  texts: list
  latents: list
  token_ids: list


def _context(pipe: Pipeline, latents, t: float):
  """Visual tokens and time embeddings of the story's images, clean, at time t."""
  stack = jnp.stack(latents)
  ts = jnp.full((len(latents),), t, jnp.float32)
  return understanding.visual_tokens(pipe.model, pipe.params, stack, ts)


def text_round(pipe: Pipeline, history, positions, latents, *, sampling: TokenSampling,
               max_new_tokens: int, context_t: float, rng, show_progress: bool = False):
  """Generated ids (ending with the stop token if one was produced)."""
  row = sequences.mixed_text_prompt(history, positions, pipe.special)
  if row["prompt_length"] + max_new_tokens > pipe.max_context:
    raise PromptTooLongError(f"story of {row['prompt_length']} tokens no longer fits the context")
  vis = _context(pipe, latents, context_t)[0] if latents else None
  a = prefix_lib.align([list(row["text_tokens"])], pipe.special.pad,
                       placement=row["modality_positions"][None], multiple=pipe.bucket_multiple)
  stops = [pipe.special.eos, pipe.special.boi]
  gen = decode.generate(pipe.model, pipe.params, a.tokens, a.shift, a.lengths, a.placement,
                        a.attention, vis, decode.stop_array(stops), pipe.special.pad, rng,
                        max_new_tokens=max_new_tokens, sampling=sampling,
                        show_progress=show_progress)
  return decode.trim(np.asarray(gen.tokens), stops, keep_stop=True)[0]


def image_round(pipe: Pipeline, history, positions, latents, flow: FlowSampling, noise,
                show_progress: bool = False) -> np.ndarray:
  """The next image after `[bos] history [boi]`, earlier images as clean context (t = 1)."""
  sp = pipe.special
  cond = [sp.bos] + list(history) + [sp.boi]
  m = max(len(latents), 1)
  place = np.zeros((2, m, 2), np.int32)
  if latents:
    place[0] = np.asarray(positions, np.int32)
  rows = [cond, [sp.bos, sp.boi]]
  use_cfg = flow.guidance_scale != 0
  if not use_cfg:
    rows, place = rows[:1], place[:1]
  if len(cond) + pipe.image_block > pipe.max_context:
    raise PromptTooLongError(f"story of {len(cond)} tokens no longer fits the context")
  a = prefix_lib.align(rows, sp.pad, placement=place, multiple=pipe.bucket_multiple)
  ctx_vis = ctx_te = None
  if latents:
    vis, te = _context(pipe, latents, 1.0)
    if use_cfg:  # the null row has only empty slots: its context values are never read
      vis = jnp.concatenate([vis, jnp.zeros_like(vis)])
      te = jnp.concatenate([te, jnp.zeros_like(te)])
    ctx_vis, ctx_te = vis, te
  grid = transport.time_grid(flow.num_steps, flow.time_shifting_factor)
  out = visual.sample_latents(pipe.model, pipe.params, a.tokens, a.shift, a.lengths, a.placement,
                              a.attention, ctx_vis, ctx_te, noise[None], grid, flow.guidance_scale,
                              method=flow.method, use_cfg=use_cfg, show_progress=show_progress)
  return np.asarray(out[0])


def generate_story(pipe: Pipeline, prompt: str = sequences.VIST_FLAG, *, rounds: int = 4,
                   text_sampling: TokenSampling = STORY_SAMPLING, max_text_tokens: int = 200,
                   flow: FlowSampling = FlowSampling(guidance_scale=5.0),
                   later_guidance_scale: Optional[float] = 5.0, context_t: float = 1.0,
                   seed: int = 0, show_progress: bool = False) -> Story:
  """Runs `rounds` text(/image) rounds after `prompt` (the original prompts with the
  VIST flag "Mixed-modality generation (VIST).")."""
  sp = pipe.special
  history = tokenizer_lib.encode(pipe.tokenizer, prompt)
  positions, latents, texts = [], [], []
  key = jax.random.PRNGKey(seed)
  shape = pipe.latent_shape()
  for r in range(rounds):
    with progress.bar(max_text_tokens, f"round {r}: text", show_progress) as bar:
      ids = text_round(pipe, history, positions, latents, sampling=text_sampling,
                       max_new_tokens=max_text_tokens, context_t=context_t,
                       rng=jax.random.fold_in(key, 2 * r), show_progress=show_progress)
      progress.advance_to(bar, max_text_tokens)  # stopped early at eos / boi
    texts.append(pipe.tokenizer.decode(ids, skip_special_tokens=False))
    history = history + ids
    if not ids or ids[-1] != sp.boi:
      continue
    scale = flow.guidance_scale if r == 0 or later_guidance_scale is None else later_guidance_scale
    settings = dataclasses.replace(flow, guidance_scale=scale)
    noise = transport.initial_noise(jax.random.fold_in(key, 2 * r + 1), shape)
    with progress.bar(settings.evaluations(), f"round {r}: image", show_progress):
      latent = image_round(pipe, history[:-1], positions, latents, settings, noise, show_progress)
    cond, _ = sequences.mixed_image_prompt(history[:-1], positions, sp,
                                           num_visual_tokens=pipe.image_block)
    history = cond["history_ids"].tolist()
    positions = cond["modality_positions"].tolist()
    latents.append(jnp.asarray(latent))
  return Story(texts, [np.asarray(l) for l in latents], [sp.bos] + history)
