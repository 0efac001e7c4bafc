"""Where the original PyTorch Show-o2 spends its train step, by part of the model.

Run with the reference environment of ../shared/bench/setup_reference.sh:

    REF=REF/show-o2 PYTHONPATH=REF/stub REF/venv/bin/python benchmarks/reference_breakdown.py \
        --steps 2 --json out.json

Builds the `small` model and the train batch of ../shared/bench/ref_bench.py (batch
2 x 1024, one 432-px image per row, every text position labelled, stage 2, AdamW,
0.2 * NTP + FM) and times, per step, the wall seconds spent inside each part, forward
and backward, with module hooks: `register_forward_pre_hook` / `register_forward_hook`
around the forward of a module, `register_full_backward_pre_hook` /
`register_full_backward_hook` around its backward (the autograd engine runs a CPU
backward on one thread, in order, so the interval holds that module's backward; ops
of parallel branches that the engine interleaves are counted where they run). Parts:

  LLM attention (q/k/v/o projections, RoPE, SDPA), LLM MLP, LLM norms/residuals (the
  decoder layers minus those two, plus the final norm), lm_head, NTP loss
  (`next_token_prediction`, forward; its backward lands in `other`), SigLIP (the
  semantic layers), flow head attention (its layers' self_attn), flow head rest (adaLN,
  MLP, norms, final layer, diff_proj), projector/STF (patch embedders, fusion_proj, time
  embedding), FM loss (forward), optimizer (AdamW step + zero_grad), other (the rest:
  embeddings, the scatter into the sequence, the loss backward).

Prints a table and one JSON line (the last line of stdout).
"""
import argparse
import collections
import json
import os
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--json", default=None)
args = ap.parse_args()
torch.set_num_threads(args.threads)
sys.path.insert(0, os.environ["REF"])
torch.manual_seed(0)
import tempfile  # noqa: E402

from transformers import Qwen2Config, Qwen2ForCausalLM as HFQwen2, SiglipConfig, SiglipModel as HFSiglip  # noqa: E402
import models.modules as modules  # noqa: E402

# ---- the model of ref_bench.py (small config)
work = tempfile.mkdtemp()
llm = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
sig = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, vocab_size=64),
                   vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=7,
                                      num_attention_heads=6, image_size=27 * 14, patch_size=14))
HFQwen2(llm).save_pretrained(work + "/llm")
HFSiglip(sig).save_pretrained(work + "/sig")
_o = modules.DiffusionHeadConfig.__init__


def _small(self, hidden_size=512, head_dim=64, intermediate_size=2048):
  _o(self, hidden_size=hidden_size, head_dim=head_dim, intermediate_size=intermediate_size)
  self.num_attention_heads = 8
  self.num_key_value_heads = 2


modules.DiffusionHeadConfig.__init__ = _small
import models.modeling_showo2_qwen2_5 as mm  # noqa: E402

mm.DiffusionHeadConfig = modules.DiffusionHeadConfig
from models.omni_attention import omni_attn_mask_naive  # noqa: E402

model = mm.Showo2Qwen2_5(llm_vocab_size=32012, llm_model_path=work + "/llm", image_latent_dim=16,
                         image_latent_height=27, image_latent_width=27, patch_size=2, hidden_size=512,
                         clip_latent_dim=384, num_diffusion_layers=4,
                         clip_pretrained_model_path=work + "/sig").float()

# ---- hooks: inclusive seconds per (module group, direction)
spent = collections.Counter()
_open = {}


def _hook(group):
  def fpre(mod, *_):
    _open[(id(mod), "f")] = time.perf_counter()

  def fpost(mod, *_):
    spent[(group, "fwd")] += time.perf_counter() - _open.pop((id(mod), "f"))

  def bpre(mod, *_):
    _open[(id(mod), "b")] = time.perf_counter()

  def bpost(mod, *_):
    t0 = _open.pop((id(mod), "b"), None)
    if t0 is not None:
      spent[(group, "bwd")] += time.perf_counter() - t0
  return fpre, fpost, bpre, bpost


def watch(mod, group):
  fpre, fpost, bpre, bpost = _hook(group)
  mod.register_forward_pre_hook(fpre)
  mod.register_forward_hook(fpost)
  mod.register_full_backward_pre_hook(bpre)
  mod.register_full_backward_hook(bpost)


for layer in model.showo.model.layers:
  watch(layer, "llm_layer")
  watch(layer.self_attn, "LLM attention")
  watch(layer.mlp, "LLM MLP")
watch(model.showo.model.norm, "LLM norms/residuals")
watch(model.showo.lm_head, "lm_head")
watch(model.und_trans, "SigLIP")
for layer in model.diffusion_head_a:
  watch(layer, "flow_layer")
  watch(layer.self_attn, "flow head attention")
for m in (model.diffusion_head_b, model.diff_proj):
  watch(m, "flow head rest")
for m in (model.image_embedder_und, model.image_embedder_gen, model.fusion_proj, model.time_embed,
          model.time_embed_proj):
  watch(m, "projector/STF")


def _timed(fn, group):
  def wrapped(*a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    spent[(group, "fwd")] += time.perf_counter() - t0
    return out
  return wrapped


mm.next_token_prediction = _timed(mm.next_token_prediction, "NTP loss")
mm.velocity_prediction = _timed(mm.velocity_prediction, "FM loss")

# ---- the train batch of ref_bench.py
L, N = 1024, 730
text = torch.randint(0, 32000, (2, L))
pos = torch.tensor([[[34, N]], [[2, N]]])
mask = omni_attn_mask_naive(2, L, pos, "cpu").float()
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
img_mask = torch.zeros(2, L, dtype=torch.long)
img_mask[0, 34:34 + N] = 1
img_mask[1, 2:2 + N] = 1
labels = text.clone()
labels[img_mask == 1] = -100
lat, tt, v = torch.randn(2, 16, 54, 54), torch.rand(2), torch.randn(2, 16, 54, 54)


def step():
  _, l1, l2 = model(text_tokens=text, image_latents=lat, t=tt, attention_mask=mask, image_masks=img_mask.clone(),
                    text_labels=labels, image_labels=v, modality_positions=pos, max_seq_len=L, device="cpu")
  t0 = time.perf_counter()
  (0.2 * l1 + l2).backward()
  spent[("backward call", "bwd")] += time.perf_counter() - t0
  t0 = time.perf_counter()
  opt.step()
  opt.zero_grad()
  spent[("optimizer", "step")] += time.perf_counter() - t0


step()
spent.clear()
t0 = time.perf_counter()
for _ in range(args.steps):
  step()
step_s = (time.perf_counter() - t0) / args.steps
s = {k: v / args.steps for k, v in spent.items()}

parts = collections.OrderedDict()
for d in ("fwd", "bwd"):
  attn, mlp = s.get(("LLM attention", d), 0.0), s.get(("LLM MLP", d), 0.0)
  parts[("LLM attention", d)] = attn
  parts[("LLM MLP", d)] = mlp
  parts[("LLM norms/residuals", d)] = (s.get(("llm_layer", d), 0.0) - attn - mlp
                                       + s.get(("LLM norms/residuals", d), 0.0))
  parts[("lm_head", d)] = s.get(("lm_head", d), 0.0)
  parts[("SigLIP", d)] = s.get(("SigLIP", d), 0.0)
  fattn = s.get(("flow head attention", d), 0.0)
  parts[("flow head attention", d)] = fattn
  parts[("flow head rest", d)] = s.get(("flow_layer", d), 0.0) - fattn + s.get(("flow head rest", d), 0.0)
  parts[("projector/STF", d)] = s.get(("projector/STF", d), 0.0)
  parts[("NTP loss", d)] = s.get(("NTP loss", d), 0.0)
  parts[("FM loss", d)] = s.get(("FM loss", d), 0.0)
parts[("optimizer", "step")] = s.get(("optimizer", "step"), 0.0)
fwd_total = step_s - s[("backward call", "bwd")] - s[("optimizer", "step")]
parts[("other", "fwd")] = fwd_total - sum(v for (k, d), v in parts.items() if d == "fwd")
parts[("other", "bwd")] = s[("backward call", "bwd")] - sum(v for (k, d), v in parts.items() if d == "bwd")

by_part = collections.OrderedDict()
for (k, d), v in parts.items():
  by_part.setdefault(k, {"fwd": 0.0, "bwd": 0.0, "step": 0.0})[d] += v
print(f"original train step: {step_s:.3f} s wall, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
print(f"{'part':<22} {'fwd s':>7} {'bwd s':>7} {'total s':>8} {'share':>6}")
for k, v in by_part.items():
  tot = sum(v.values())
  print(f"{k:<22} {v['fwd']:7.3f} {v['bwd'] + v['step']:7.3f} {tot:8.3f} {100 * tot / step_s:5.1f}%")
res = dict(step_s=step_s, threads=args.threads, load_avg_1m=os.getloadavg()[0],
           parts={k: dict(fwd_s=v["fwd"], bwd_s=v["bwd"] + v["step"], total_s=sum(v.values()))
                  for k, v in by_part.items()})
if args.json:
  with open(args.json, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res))
