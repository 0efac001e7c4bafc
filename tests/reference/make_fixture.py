"""Writes Show-o2 golden-fixture directories from the PyTorch reference.

`make_fixture(out_dir, llm=..., siglip=..., flow=..., latent_hw=(H, W), ...)` builds
`Showo2TorchRef` with random non-zero weights and writes a directory in the format of
shared/fixtures/showo2 (see shared/fixtures/README.md): config.json (with `flow_head`),
llm_config.json, siglip_config.json, model.safetensors (original key names) and
cases.npz (training forward, inference v_pred, video, text-only).

Command line: `python tests/reference/make_fixture.py OUT_DIR [--preset NAME]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from showo2_torch_ref import Showo2TorchRef, omni_allow, omni_attn_mask_naive  # noqa: E402

# The shipped fixture's sizes; every argument of make_fixture overrides one group.
DEFAULT_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=300, llm_vocab_size=312, rope_theta=1e6,
                   rms_norm_eps=1e-6)
DEFAULT_SIGLIP = dict(hidden_size=48, intermediate_size=96, used_layers=2, num_attention_heads=4,
                      grid=4, layer_norm_eps=1e-6)
DEFAULT_FLOW = dict(hidden_size=32, head_dim=8, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, num_layers=2, rms_norm_eps=1e-5, rope_theta=5e5,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                                  "low_freq_factor": 1.0, "original_max_position_embeddings": 8192})

SIGLIP_PATCH = 14   # SigLIP's pixel patch; only image_size / patch_size (the grid) matters here


def build_jsons(llm, siglip, flow, latent_hw, patch_size, latent_dim, tie_word_embeddings):
  """(config.json, llm_config.json, siglip_config.json) as dicts."""
  h, w = latent_hw
  if h % patch_size or w % patch_size:
    raise ValueError(f"latent grid {latent_hw} is not a multiple of the patch size {patch_size}")
  fh = {k: flow[k] for k in ("hidden_size", "head_dim", "intermediate_size", "num_attention_heads",
                             "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling")}
  top = {
      "llm_vocab_size": llm["llm_vocab_size"],
      "load_from_showo": False,
      "image_latent_dim": latent_dim,
      # Patch units, the grid the inputs use: when the SigLIP table has another number of
      # rows the original interpolates it (spec 1.3).
      "image_latent_height": h // patch_size,
      "image_latent_width": w // patch_size,
      "video_latent_height": h // patch_size,
      "video_latent_width": w // patch_size,
      "patch_size": patch_size,
      "hidden_size": llm["hidden_size"],
      "clip_latent_dim": siglip["hidden_size"],
      "num_diffusion_layers": flow["num_layers"],
      "add_time_embeds": True,
      "add_qk_norm": True,
      "flow_head": fh,
  }
  llm_json = {
      "architectures": ["Qwen2ForCausalLM"],
      "model_type": "qwen2",
      "vocab_size": llm["vocab_size"],
      "max_position_embeddings": 1024,
      "hidden_size": llm["hidden_size"],
      "intermediate_size": llm["intermediate_size"],
      "num_hidden_layers": llm["num_hidden_layers"],
      "num_attention_heads": llm["num_attention_heads"],
      "num_key_value_heads": llm["num_key_value_heads"],
      "use_sliding_window": False,
      "sliding_window": None,
      "max_window_layers": 28,
      "hidden_act": "silu",
      "initializer_range": 0.02,
      "rms_norm_eps": llm["rms_norm_eps"],
      "use_cache": True,
      "rope_theta": llm["rope_theta"],
      "rope_scaling": None,
      "attention_dropout": 0.0,
      "tie_word_embeddings": bool(tie_word_embeddings),
      "torch_dtype": "float32",
      "bos_token_id": None,
      "eos_token_id": None,
  }
  siglip_json = {
      "model_type": "siglip_vision_model",
      "hidden_size": siglip["hidden_size"],
      "intermediate_size": siglip["intermediate_size"],
      "num_hidden_layers": siglip["used_layers"] + 1,   # Show-o2 deletes the last one
      "num_attention_heads": siglip["num_attention_heads"],
      "num_channels": 3,
      "patch_size": SIGLIP_PATCH,
      "image_size": SIGLIP_PATCH * siglip["grid"],
      "attention_dropout": 0.0,
      "layer_norm_eps": siglip["layer_norm_eps"],
      "hidden_act": "gelu_pytorch_tanh",
  }
  return top, llm_json, siglip_json


def randomize_(model: Showo2TorchRef, gen: torch.Generator):
  """Random non-zero weights: norm scales near 1, matrices ~ 1/sqrt(fan_in), small biases."""
  done = set()
  for name, p in model.named_parameters(remove_duplicate=True):
    if id(p) in done:
      continue
    done.add(id(p))
    with torch.no_grad():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      is_norm = ("norm" in name or name.startswith("fusion_proj.0.")) and p.dim() == 1
      if is_norm and name.endswith(".weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif p.dim() == 1:
        p.copy_(0.05 * noise)
      elif "embed_tokens" in name or "lm_head" in name or "position_embedding" in name:
        p.copy_(0.2 * noise)
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(noise / np.sqrt(fan_in))


def state_dict_numpy(model: Showo2TorchRef) -> dict:
  """The state_dict with the original keys; a tied lm_head is written too, as the original does."""
  sd = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
  assert "showo.lm_head.weight" in sd
  return sd


def _block_layout(rng, num_blocks, block_len, gap_range=(2, 5), head_range=(2, 5), tail=6):
  """Offsets of `num_blocks` visual blocks with text before, between and after them."""
  offsets = []
  pos = int(rng.integers(*head_range))
  for _ in range(num_blocks):
    offsets.append(pos)
    pos += block_len + int(rng.integers(*gap_range))
  return offsets, pos + tail


def _text_labels(rng, tokens, image_masks, p_label=0.7):
  labels = np.where(rng.random(tokens.shape) < p_label, tokens, -100)
  labels[image_masks.astype(bool)] = -100
  labels[:, 0] = -100
  return labels.astype(np.int64)


def _case(model, tokens, latents, t, mp, text_labels=None, image_labels=None, image_masks=None):
  mask = omni_attn_mask_naive(tokens.shape[0], tokens.shape[1], torch.from_numpy(mp))
  with torch.no_grad():
    r = model(torch.from_numpy(tokens), torch.from_numpy(latents), torch.from_numpy(t), mask,
              torch.from_numpy(mp),
              text_labels=None if text_labels is None else torch.from_numpy(text_labels),
              image_labels=None if image_labels is None else torch.from_numpy(image_labels),
              image_masks=None if image_masks is None else torch.from_numpy(image_masks))
  out = {k: v.numpy() for k, v in r.items() if k in ("logits", "loss_ntp", "loss_flow", "v_pred")}
  out["omni_mask"] = omni_allow(mask).numpy()
  return out


ALL_CASES = ("train", "video", "text_only")


def make_cases(model: Showo2TorchRef, latent_hw, video_frames, rng, video_losses=True,
               which=ALL_CASES) -> dict:
  """cases.npz contents: training + inference ("train"), "video" and "text_only" cases."""
  unknown = set(which) - set(ALL_CASES)
  if unknown:
    raise ValueError(f"unknown cases {sorted(unknown)}; known: {ALL_CASES}")
  vocab = model.config["llm_vocab_size"]
  c = model.config["image_latent_dim"]
  p = model.config["patch_size"]
  h, w = latent_hw
  n_tok = (h // p) * (w // p)
  block = n_tok + 1
  cases = {}

  # Training / inference: 2 rows, 2 slots; row 0 one image and an empty (0, 0) slot.
  b, m = 2, 2
  offs0, end0 = _block_layout(rng, 1, block)
  offs1, end1 = _block_layout(rng, 2, block)
  length = max(end0, end1)
  mp = np.zeros((b, m, 2), np.int64)
  mp[0, 0] = (offs0[0], block)
  mp[1, 0] = (offs1[0], block)
  mp[1, 1] = (offs1[1], block)
  tokens = rng.integers(0, vocab, size=(b, length)).astype(np.int64)
  image_masks = np.zeros((b, length), np.int64)
  for i in range(b):
    for j in range(m):
      o, n = mp[i, j]
      image_masks[i, o:o + n] = 1
  latents = rng.standard_normal((b * m, c, h, w)).astype(np.float32)
  t = rng.uniform(0.02, 0.98, size=(b * m,)).astype(np.float32)
  image_labels = rng.standard_normal((b * m, c, h, w)).astype(np.float32)
  text_labels = _text_labels(rng, tokens, image_masks)
  train = _case(model, tokens, latents, t, mp, text_labels, image_labels, image_masks)
  if "train" in which:
    cases.update(text_tokens=tokens, modality_positions=mp, image_masks=image_masks,
                 image_latents=latents, t=t, image_labels=image_labels, text_labels=text_labels,
                 omni_mask=train["omni_mask"], logits=train["logits"], loss_ntp=train["loss_ntp"],
                 loss_flow=train["loss_flow"])
    cases["v_pred"] = _case(model, tokens, latents, t, mp)["v_pred"]

  # Video: one clip of `video_frames` latent frames, one time slot for the clip.
  vblock = video_frames * n_tok + 1
  voffs, vlen = _block_layout(rng, 1, vblock)
  vmp = np.array([[[voffs[0], vblock]]], np.int64)
  vtokens = rng.integers(0, vocab, size=(1, vlen)).astype(np.int64)
  vlatents = rng.standard_normal((1, c, video_frames, h, w)).astype(np.float32)
  vt = rng.uniform(0.02, 0.98, size=(1,)).astype(np.float32)
  vcase = dict(text_tokens=vtokens, modality_positions=vmp, latents=vlatents, t=vt)
  if video_losses:
    vmasks = np.zeros((1, vlen), np.int64)
    vmasks[0, voffs[0]:voffs[0] + vblock] = 1
    vlabels = rng.standard_normal(vlatents.shape).astype(np.float32)
    vtext_labels = _text_labels(rng, vtokens, vmasks)
    vtrain = _case(model, vtokens, vlatents, vt, vmp, vtext_labels, vlabels, vmasks)
    vcase.update(image_masks=vmasks, image_labels=vlabels, text_labels=vtext_labels,
                 loss_ntp=vtrain["loss_ntp"], loss_flow=vtrain["loss_flow"])
  vinf = _case(model, vtokens, vlatents, vt, vmp)
  vcase.update(omni_mask=vinf["omni_mask"], logits=vinf["logits"], v_pred=vinf["v_pred"])
  if "video" in which:
    cases.update({f"video_{k}": v for k, v in vcase.items()})

  # Text only: the causal LM.
  if "text_only" in which:
    text_only = tokens[:1, :16].copy()
    with torch.no_grad():
      cases["text_only_tokens"] = text_only
      cases["text_only_logits"] = model.forward_text(torch.from_numpy(text_only)).numpy()
  return cases


def make_fixture(out_dir, *, llm=None, siglip=None, flow=None, latent_hw=(8, 8), video_frames=2,
                 tie_word_embeddings=True, seed=0, patch_size=2, latent_dim=16,
                 video_losses=True, cases=ALL_CASES) -> str:
  """Writes a fixture directory; returns its path.

  llm / siglip / flow: dicts overriding DEFAULT_LLM / DEFAULT_SIGLIP / DEFAULT_FLOW
  (siglip `grid` is the position-table side, `used_layers` the layers kept; flow
  `num_layers` is num_diffusion_layers). latent_hw: the latent (not token) grid.
  video_losses: also write video_{image_masks,image_labels,text_labels,loss_ntp,loss_flow}.
  cases: which of "train" (training forward + inference v_pred), "video", "text_only" to
  write (all by default, as the shipped fixture; the random inputs do not depend on it).
  """
  llm = {**DEFAULT_LLM, **(llm or {})}
  siglip = {**DEFAULT_SIGLIP, **(siglip or {})}
  flow = {**DEFAULT_FLOW, **(flow or {})}
  top, llm_json, siglip_json = build_jsons(llm, siglip, flow, latent_hw, patch_size, latent_dim,
                                           tie_word_embeddings)
  torch.manual_seed(seed)
  model = Showo2TorchRef(top, llm_json, siglip_json).eval()
  randomize_(model, torch.Generator().manual_seed(seed))
  if tie_word_embeddings:
    assert model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
  cases = make_cases(model, latent_hw, video_frames, np.random.default_rng(seed), video_losses, cases)

  os.makedirs(out_dir, exist_ok=True)
  for name, obj in (("config.json", top), ("llm_config.json", llm_json), ("siglip_config.json", siglip_json)):
    with open(os.path.join(out_dir, name), "w") as f:
      json.dump(obj, f, indent=1)
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file(state_dict_numpy(model), os.path.join(out_dir, "model.safetensors"))
  np.savez(os.path.join(out_dir, "cases.npz"), **cases)
  return out_dir


# Named configurations exercised by tests/reference/test_check_parity_varied.py.
PRESETS = {
    "shipped_like": dict(),
    "nonsquare_interp": dict(latent_hw=(6, 10), siglip=dict(grid=4), seed=1),
    "untied_wide": dict(
        llm=dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
                 num_key_value_heads=2, vocab_size=290, llm_vocab_size=301, rope_theta=1e4),
        siglip=dict(hidden_size=32, intermediate_size=64, used_layers=3, num_attention_heads=2, grid=4),
        flow=dict(hidden_size=48, head_dim=8, intermediate_size=80, num_attention_heads=6,
                  num_key_value_heads=2, num_layers=3),
        latent_hw=(8, 8), tie_word_embeddings=False, seed=2),
    "video3": dict(latent_hw=(6, 6), siglip=dict(grid=2), video_frames=3, seed=3),
    "same_width": dict(
        llm=dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1),
        flow=dict(hidden_size=48, head_dim=12, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2),
        latent_hw=(8, 8), seed=4),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir")
  parser.add_argument("--preset", default="shipped_like", choices=sorted(PRESETS))
  args = parser.parse_args(argv)
  print(make_fixture(args.out_dir, **PRESETS[args.preset]))


if __name__ == "__main__":
  main()
