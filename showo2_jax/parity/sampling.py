"""Parity of our cached sampling loops with the original's uncached ones (`sampling.npz`).

The fixture (format in shared/fixtures/README.md) holds the original's float32
outputs on a tiny random model:
  * text-to-image: 2 prompts + their null prompts, Euler on the shifted grid with
    CFG -> the final latents;
  * understanding: one prompt with a clean image, greedy decoding -> the tokens,
    and the logits over the prompt plus every generated token.
Both are run here through the *cached* paths (prefix KV cache for T2I, prefill +
cached decode for understanding), so this checks the caches, not just the model.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.convert.showo2_torch import load_original
from showo2_jax.models.showo2 import Showo2
from showo2_jax.parity.metrics import relative_error
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.flow import transport
from showo2_jax.sample import understanding, visual
from showo2_jax.sample.tokens import GREEDY

THRESHOLD = 1e-4
FIXTURE_PAD_ID = 0  # fixture ids: pad 0, bos 1, eos 2, boi 3, eoi 4, img_pad 5

Result = Tuple[str, float, float]



def cached_t2i_latents(model, params, d) -> jax.Array:
  """Final latents of the fixture's T2I case (`t2i_*` arrays of `d`) by the cached sampler."""
  tokens, mp = d["t2i_text_tokens"], d["t2i_modality_positions"]
  # The prefix of each row is everything before its time token: [bos] prompt [boi].
  rows = [list(tokens[i, :mp[i, 0, 0]]) for i in range(tokens.shape[0])]
  aligned = prefix_lib.align(rows, FIXTURE_PAD_ID, multiple=8)
  grid = transport.time_grid(int(d["t2i_num_grid_points"]), float(d["t2i_time_shifting_factor"]))
  return visual.sample_latents(
      model, params, aligned.tokens, aligned.shift, aligned.lengths, aligned.placement,
      aligned.attention, None, None, jnp.asarray(d["t2i_noise"]), grid,
      float(d["t2i_guidance_scale"]), use_cfg=True)


def _t2i(model, params, d) -> List[Result]:
  out = cached_t2i_latents(model, params, d)
  return [("t2i_final_latents (cached)", relative_error(out, d["t2i_final_latents"]), THRESHOLD)]


def _understanding(model, params, d) -> List[Result]:
  tokens = d["und_tokens"].astype(np.int32)
  mp = d["und_modality_positions"].astype(np.int32)
  want = d["und_greedy_tokens"]
  full = d["und_full_logits"][0]
  n_prompt, n_new = len(tokens), len(want)
  vis = understanding.image_tokens(model, params, jnp.asarray(d["und_latents"]))
  row = {"text_tokens": tokens, "prompt_length": n_prompt, "modality_positions": mp[0],
         "attention_modality_positions": mp[0]}
  # No stop token: the fixture decodes a fixed number of tokens. One step more than
  # the fixture's tokens gives the logits after the last one (its final position).
  n_steps = min(n_new + 1, full.shape[0] - n_prompt)
  gen = understanding.answer_rows(model, params, [row], vis, pad_id=FIXTURE_PAD_ID, stop_ids=(),
                                  max_new_tokens=max(n_steps, n_new), sampling=GREEDY,
                                  record_logits=True)
  got = np.asarray(gen.tokens[0, :n_new])
  shift = gen.prompt_logits.shape[1] - n_prompt
  prompt_logits = np.asarray(gen.prompt_logits[0, shift:])
  step_logits = np.asarray(gen.step_logits[0, :full.shape[0] - n_prompt])
  logits = np.concatenate([prompt_logits, step_logits])
  mismatch = float(np.mean(got != want))
  return [("und_greedy_tokens (mismatches)", mismatch, THRESHOLD),
          ("und_full_logits (cached)", relative_error(logits, full), THRESHOLD)]


def run_sampling_parity(fixture_dir, **model_overrides) -> List[Result]:
  """(name, rel_err, threshold) per check of `fixture_dir/sampling.npz`; [] without it.

  Runs in float32 on the directory's original checkpoint (any such directory).
  `model_overrides`: Showo2Config fields that must not change the numbers
  (`attention_impl="chunked"`, `attention_chunk_size=...`).
  """
  path = os.path.join(os.fspath(fixture_dir), "sampling.npz")
  if not os.path.exists(path):
    return []
  config, params = load_original(os.fspath(fixture_dir), dtype=np.float32)
  config = config.replace(dtype="float32", param_dtype="float32", **model_overrides)
  model = Showo2(config, empty_slots_overwrite_bos=False)
  params = jax.tree.map(jnp.asarray, params)
  with np.load(path) as npz:
    d = dict(npz)
  results = []
  if "t2i_final_latents" in d:
    results += _t2i(model, params, d)
  if "und_greedy_tokens" in d:
    results += _understanding(model, params, d)
  return results
