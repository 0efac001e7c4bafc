"""`check-parity` on fixture directories other than the shipped one.

The golden outputs here come from `showo2_torch_ref.py`, an independent, literal
PyTorch reference of the original forward pass written from the spec. It is first
validated against the shipped fixture (outputs of the original itself); the fixtures
it then writes cover what the shipped one does not: a non-square latent grid with an
interpolated position table, untied embeddings with other widths/depths/heads, video
with three latent frames, and an LLM as wide as the flow head (no projections).
"""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

# torch and the torch reference (make_fixture, showo2_torch_ref) are imported by the tests
# that use them, not at collection: a worker that runs none of them does not import torch.
from showo2_jax.cli import main as cli_main
from showo2_jax.parity import showo2 as parity

REFERENCE_TOLERANCE = 1e-5

# preset -> the cases written (compiling each case costs a few seconds of CPU, so each
# preset carries those its feature needs; make_fixture writes all three by default).
VARIED = {
    "nonsquare_interp": ("train", "video", "text_only"),
    "untied_wide": ("train", "text_only"),
    "video3": ("video", "text_only"),
    "same_width": ("train", "text_only"),
}

# The outputs the runner must report for each case make_fixture writes.
EXPECTED_OUTPUTS = {
    "train": {"omni_mask (mismatches)", "logits", "loss_ntp", "loss_flow", "v_pred"},
    "video": {"video_omni_mask (mismatches)", "video_logits", "video_loss_ntp", "video_loss_flow",
              "video_v_pred"},
    "text_only": {"text_only_logits"},
}


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
  """preset name -> generated directory (written on first use)."""
  root = tmp_path_factory.mktemp("showo2_varied")
  made = {}

  def get(name):
    from make_fixture import PRESETS, make_fixture  # pylint: disable=import-outside-toplevel
    if name not in made:
      made[name] = make_fixture(str(root / name), **PRESETS[name], cases=VARIED[name])
    return made[name]

  return get


def _run_cli(monkeypatch, capsys, path):
  """Runs `showo2-jax check-parity path`; returns (exit code, stdout, runner results)."""
  seen = []
  real = parity.run_showo2_parity

  def spy(fixture_dir):
    results = real(fixture_dir)
    seen.extend(results)
    return results

  monkeypatch.setattr(parity, "run_showo2_parity", spy)
  rc = cli_main.main(["check-parity", str(path)])
  return rc, capsys.readouterr().out, seen


# --------------------------------------------------------------------------- the reference itself
def test_reference_reproduces_shipped_fixture(showo2_fixture_dir):
  import torch  # pylint: disable=import-outside-toplevel
  from showo2_torch_ref import Showo2TorchRef, omni_allow, omni_attn_mask_naive  # pylint: disable=import-outside-toplevel
  model = Showo2TorchRef.from_dir(str(showo2_fixture_dir))
  cases = np.load(showo2_fixture_dir / "cases.npz")
  arr = lambda k: torch.from_numpy(cases[k])
  errors = {}
  with torch.no_grad():
    for prefix, latents, t in (("", "image_latents", "t"), ("video_", "video_latents", "video_t")):
      tokens, mp = arr(f"{prefix}text_tokens"), arr(f"{prefix}modality_positions")
      mask = omni_attn_mask_naive(tokens.shape[0], tokens.shape[1], mp)
      np.testing.assert_array_equal(omni_allow(mask).numpy(), cases[f"{prefix}omni_mask"])
      labels = {}
      if f"{prefix}loss_flow" in cases:
        labels = dict(text_labels=arr(f"{prefix}text_labels"), image_labels=arr(f"{prefix}image_labels"),
                      image_masks=arr(f"{prefix}image_masks"))
      out = model(tokens, arr(latents), arr(t), mask, mp, **labels)
      for key in ("logits", "v_pred", "loss_ntp", "loss_flow"):
        if f"{prefix}{key}" in cases:
          errors[f"{prefix}{key}"] = _rel(out[key].numpy(), cases[f"{prefix}{key}"])
    errors["text_only_logits"] = _rel(model.forward_text(arr("text_only_tokens")).numpy(),
                                      cases["text_only_logits"])
  assert set(errors) == {"logits", "v_pred", "loss_ntp", "loss_flow", "video_logits", "video_v_pred",
                         "text_only_logits"}
  bad = {k: v for k, v in errors.items() if not v < REFERENCE_TOLERANCE}
  assert not bad, f"reference disagrees with the original's outputs: {bad} (all: {errors})"


def test_hf_qwen2_takes_the_additive_4d_mask_as_given(showo2_fixture_dir):
  """transformers passes a 4D float mask straight to eager attention: an omni block is
  bidirectional (outputs inside it change), positions before it are untouched."""
  import torch  # pylint: disable=import-outside-toplevel
  from showo2_torch_ref import Showo2TorchRef, omni_attn_mask_naive  # pylint: disable=import-outside-toplevel
  model = Showo2TorchRef.from_dir(str(showo2_fixture_dir))
  tokens = torch.arange(20)[None] % 300
  causal = omni_attn_mask_naive(1, 20, torch.zeros((1, 1, 2), dtype=torch.long))
  omni = omni_attn_mask_naive(1, 20, torch.tensor([[[6, 8]]]))
  with torch.no_grad():
    embeds = model.showo.model.embed_tokens(tokens)
    a = model.showo.model(inputs_embeds=embeds, attention_mask=causal).last_hidden_state
    b = model.showo.model(inputs_embeds=embeds, attention_mask=omni).last_hidden_state
    c = model.showo.model(input_ids=tokens).last_hidden_state
  torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)        # the naive causal mask == HF's causal
  torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
  assert (a[:, 6:13] - b[:, 6:13]).abs().amax() > 1e-3          # inside the block: sees later tokens


# --------------------------------------------------------------------------- varied directories
@pytest.mark.slow
def test_varied_configs_exercise_what_they_claim(fixture_dirs):
  """Guards the presets: each one covers the feature it is named for."""

  def load(name):
    d = fixture_dirs(name)
    with open(os.path.join(d, "config.json")) as f:
      top = json.load(f)
    with open(os.path.join(d, "siglip_config.json")) as f:
      sig = json.load(f)
    with open(os.path.join(d, "llm_config.json")) as f:
      llm = json.load(f)
    weights = load_file(os.path.join(d, "model.safetensors"))
    return d, top, sig, llm, weights, np.load(os.path.join(d, "cases.npz"))

  d, top, sig, _, w, cases = load("nonsquare_interp")
  grid = sig["image_size"] // sig["patch_size"]
  h, w_ = cases["image_latents"].shape[2:]
  assert h != w_ and (h // 2, w_ // 2) != (grid, grid)
  assert top["image_latent_height"] * top["image_latent_width"] != grid * grid  # interpolation branch

  d, top, sig, llm, w, cases = load("untied_wide")
  assert not llm["tie_word_embeddings"]
  assert not np.array_equal(w["showo.lm_head.weight"], w["showo.model.embed_tokens.weight"])
  assert w["showo.model.embed_tokens.weight"].shape == (top["llm_vocab_size"], 96)
  assert top["flow_head"]["hidden_size"] == 48
  assert len({k.split(".")[1] for k in w if k.startswith("diffusion_head_a.")}) == 3
  used = {k.split(".")[2] for k in w if k.startswith("und_trans.layers.")}
  assert len(used) == sig["num_hidden_layers"] - 1 == 3

  d, top, sig, llm, w, cases = load("video3")
  assert cases["video_latents"].shape[2] == 3
  assert cases["video_modality_positions"][0, 0, 1] == 3 * (cases["video_latents"].shape[3] // 2) ** 2 + 1

  d, top, sig, llm, w, cases = load("same_width")
  assert top["hidden_size"] == top["flow_head"]["hidden_size"]
  assert not any(k.startswith(("diff_proj.", "time_embed_proj.")) for k in w)
  assert np.array_equal(w["showo.lm_head.weight"], w["showo.model.embed_tokens.weight"])

  for name in VARIED:  # an empty (0, 0) slot in the training rows, as in the shipped fixture
    cases = np.load(os.path.join(fixture_dirs(name), "cases.npz"))
    if "modality_positions" in cases:
      mp = cases["modality_positions"]
      assert (mp[0, 1] == 0).all() and (mp[:, 0, 1] > 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIED))
def test_check_parity_on_generated_dir(name, fixture_dirs, monkeypatch, capsys):
  path = fixture_dirs(name)
  rc, out, results = _run_cli(monkeypatch, capsys, path)
  errors = {n: e for n, e, _ in results}
  assert set(errors) == set().union(*(EXPECTED_OUTPUTS[c] for c in VARIED[name])), out
  failed = [(n, e, th) for n, e, th in results if not e < th]
  assert not failed, f"{name}: {failed}\n{out}"
  assert rc == 0, out
  assert "0 failed" in out


@pytest.mark.slow
def test_check_parity_fails_on_a_corrupted_weight(fixture_dirs, monkeypatch, capsys, tmp_path):
  """One flow-head weight changed: the velocity outputs fail, the logits still pass."""
  src = fixture_dirs("same_width")
  dst = tmp_path / "corrupted"
  shutil.copytree(src, dst)
  weights = load_file(str(dst / "model.safetensors"))
  key = "diffusion_head_a.1.mlp.down_proj.weight"
  weights[key] = weights[key].copy()
  weights[key][0, 0] += 0.5
  save_file(weights, str(dst / "model.safetensors"))
  rc, out, results = _run_cli(monkeypatch, capsys, dst)
  assert rc != 0, out
  status = {n: e < th for n, e, th in results}
  assert not status["v_pred"] and not status["loss_flow"], out
  assert status["logits"] and status["loss_ntp"] and status["text_only_logits"], out
  assert "FAIL" in out
