"""Where the original PyTorch Show-o2 spends its train step, by part of the model.

Run with the reference environment of ../shared/bench/setup_reference.sh:

    REF=REF/show-o2 PYTHONPATH=REF/stub REF/venv/bin/python benchmarks/reference_breakdown.py \
        --steps 2 --json out.json

Builds the `small` model and the train batch of ../shared/bench/ref_bench.py (batch
2 x 1024, one 432-px image per row, every text position labelled, stage 2, AdamW,
0.2 * NTP + FM), times `--steps` steps, then traces one with `torch.profiler` and
splits the step's wall time by part of the model, forward and backward: forward
hooks open a `record_function` range per module (innermost wins); a backward op
(`autograd::engine::evaluate_function: ...`) is credited to the part of the forward op
that created its autograd node (the same sequence number). Seconds are the ops' self
time (the profiler's `self_cpu_time_total`: time on the calling thread, children
excluded; intra-op threads are inside it), scaled to the untraced step time. Parts:

  LLM attention (q/k/v/o projections, RoPE, SDPA), LLM MLP, LLM norms/residuals (the
  decoder layers minus those two, plus the final norm), lm_head, NTP loss
  (`next_token_prediction`: the fp32 logits copy, cross-entropy), SigLIP (the semantic
  layers), flow head attention (its layers' self_attn), flow head rest (adaLN, MLP,
  norms, final layer, diff_proj), projector/STF (patch embedders, fusion_proj, time
  embedding), FM loss, optimizer (AdamW step + zero_grad), other (the rest: embeddings,
  the scatter into the sequence, autograd's accumulation of gradients).

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
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from transformers import Qwen2Config, Qwen2ForCausalLM as HFQwen2, SiglipConfig, SiglipModel as HFSiglip  # noqa: E402
import models.modules as modules  # noqa: E402

# ---- the model of ref_bench.py (small config)
work = tempfile.mkdtemp()  # the random HF models (~210 MB), removed at exit
atexit.register(shutil.rmtree, work, ignore_errors=True)
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

# ---- module ranges: forward ops run inside a record_function range named after their part
# (innermost wins); backward ops are credited to the part of the forward op that created
# their autograd node (same sequence number).
from torch.autograd.profiler import record_function  # noqa: E402

TAG = "part::"


def watch(mod, group):
  ranges = []

  def pre(*_):
    r = record_function(TAG + group)
    r.__enter__()
    ranges.append(r)

  def post(*_):
    ranges.pop().__exit__(None, None, None)
  mod.register_forward_pre_hook(pre)
  mod.register_forward_hook(post)


for layer in model.showo.model.layers:
  watch(layer, "LLM norms/residuals")
  watch(layer.self_attn, "LLM attention")
  watch(layer.mlp, "LLM MLP")
watch(model.showo.model.norm, "LLM norms/residuals")
watch(model.showo.lm_head, "lm_head")
watch(model.und_trans, "SigLIP")
for layer in model.diffusion_head_a:
  watch(layer, "flow head rest")
  watch(layer.self_attn, "flow head attention")
for m in (model.diffusion_head_b, getattr(model, "diff_proj", None)):
  if m is not None:   # diff_proj / time_embed_proj exist only when the LLM and flow head widths differ
    watch(m, "flow head rest")
for m in (model.image_embedder_und, model.image_embedder_gen, model.fusion_proj, model.time_embed,
          getattr(model, "time_embed_proj", None)):
  if m is not None:
    watch(m, "projector/STF")


def _ranged(fn, group):
  def wrapped(*a, **k):
    with record_function(TAG + group):
      return fn(*a, **k)
  return wrapped


mm.next_token_prediction = _ranged(mm.next_token_prediction, "NTP loss")
mm.velocity_prediction = _ranged(mm.velocity_prediction, "FM loss")


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
  (0.2 * l1 + l2).backward()
  with record_function(TAG + "optimizer"):
    opt.step()
    opt.zero_grad()


def part_of(ev, by_seq):
  """The part of a profiler event: its innermost part range (forward), or the part of
  the forward op whose autograd node it evaluates (backward)."""
  e = ev
  while e is not None:
    if e.name.startswith(TAG):
      return e.name[len(TAG):], "fwd"
    if e.name.startswith("autograd::engine::evaluate_function"):
      return by_seq.get(e.sequence_nr, "other"), "bwd"
    e = e.cpu_parent
  return "other", "fwd"


step()
t0 = time.perf_counter()
for _ in range(args.steps):
  step()
step_s = (time.perf_counter() - t0) / args.steps
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
  step()
events = list(prof.events())
by_seq = {}
for ev in events:   # forward ops that created an autograd node -> their part
  if ev.sequence_nr >= 0 and not ev.name.startswith("autograd::"):
    part, d = part_of(ev, {})
    if d == "fwd" and part != "other":
      by_seq.setdefault(ev.sequence_nr, part)
spent = collections.Counter()
for ev in events:
  if ev.name.startswith(TAG):
    continue
  part, d = part_of(ev, by_seq)
  spent[(part, "step" if part == "optimizer" else d)] += ev.self_cpu_time_total * 1e-6
traced_s = sum(spent.values())
scale = step_s / traced_s   # profiler overhead: report seconds of the untraced step

by_part = collections.OrderedDict()
for k in ("LLM attention", "LLM MLP", "LLM norms/residuals", "lm_head", "NTP loss", "SigLIP",
          "flow head attention", "flow head rest", "projector/STF", "FM loss", "optimizer", "other"):
  by_part[k] = {d: spent.get((k, d), 0.0) * scale for d in ("fwd", "bwd", "step")}
print(f"original train step: {step_s:.3f} s wall ({traced_s:.3f} s traced), {args.threads} threads, "
      f"load {os.getloadavg()[0]:.2f}")
print(f"{'part':<22} {'fwd s':>7} {'bwd s':>7} {'total s':>8} {'share':>6}")
for k, v in by_part.items():
  tot = sum(v.values())
  print(f"{k:<22} {v['fwd']:7.3f} {v['bwd'] + v['step']:7.3f} {tot:8.3f} {100 * tot / step_s:5.1f}%")
res = dict(step_s=step_s, traced_step_s=traced_s, threads=args.threads, load_avg_1m=os.getloadavg()[0],
           parts={k: dict(fwd_s=v["fwd"], bwd_s=v["bwd"] + v["step"], total_s=sum(v.values()))
                  for k, v in by_part.items()})
if args.json:
  with open(args.json, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res))
