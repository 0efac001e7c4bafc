"""Makes the committed bf16 fixture (`tests/fixtures/bf16_offset`) from a run of
`shared/bench/bf16_reference.py`, keeping only what `check-parity --bf16` compares.

1. A smaller model: the script with these constants changed (everything else,
   including the `offset` profile's attention-logit magnitudes and the 800-token
   T2I layout with its 27x27 grid, is the script's):
     python make_bf16_fixture.py patch-script bf16_reference.py tiny.py
   LLM 128 wide (2 heads x 64, 1 kv head, 2 layers, MLP 256), vocab 500, SigLIP 64
   wide (1 head, 1 layer used), flow head 96 wide (3 heads x 32, 1 kv head, MLP 192,
   1 layer). Then, with the reference environment of setup_reference.sh:
     REF=... PYTHONPATH=.../stub python tiny.py FULL_DIR --profile offset --skip-long --skip-sampling
2. The reduction:
     python make_bf16_fixture.py reduce FULL_DIR tests/fixtures/bf16_offset
   keeps row 0 of case A (rows are independent), the logits at every 16th position,
   drops the tied `lm_head` copy, and stores what the bf16 runs round to bf16 anyway
   (the weights, the latents, the original's bf16 outputs) as bfloat16 (bit patterns in
   uint16 arrays, which `showo2_jax.parity.bf16` reads back); the fp32 truth stays fp32.
"""
import json
import os
import shutil
import sys

import ml_dtypes
import numpy as np

PATCHES = [
    ("H = 256 ", "H = 128 "),
    ("CLIP = 192 ", "CLIP = 64 "),
    ("FH, FH_HD, FH_HEADS, FH_KV = 384, 64, 6, 2", "FH, FH_HD, FH_HEADS, FH_KV = 96, 32, 3, 1"),
    ("VOCAB = 2000", "VOCAB = 500"),
    ("intermediate_size=4 * H, num_hidden_layers=4,\n                      num_attention_heads=4, num_key_value_heads=2,",
     "intermediate_size=2 * H, num_hidden_layers=2,\n                      num_attention_heads=2, num_key_value_heads=1,"),
    ("vision_config=dict(hidden_size=CLIP, intermediate_size=4 * CLIP, num_hidden_layers=3,\n"
     "                                          num_attention_heads=3,",
     "vision_config=dict(hidden_size=CLIP, intermediate_size=4 * CLIP, num_hidden_layers=2,\n"
     "                                          num_attention_heads=1,"),
    ("intermediate_size=1024):", "intermediate_size=192):"),
    ("num_diffusion_layers=2,", "num_diffusion_layers=1,"),
    ("intermediate_size=1024,\n", "intermediate_size=192,\n"),
    ('names = ["siglip_0", "siglip_1"] + [f"llm_{i}" for i in range(4)] + ["flow_0", "flow_1"]',
     'names = ["siglip_0"] + [f"llm_{i}" for i in range(2)] + ["flow_0"]'),
]
LOGIT_STRIDE = 16


def patch_script(src, dst):
  text = open(src).read()
  for old, new in PATCHES:
    assert text.count(old) == 1, f"the script changed: {old!r}"
    text = text.replace(old, new)
  open(dst, "w").write(text)


def bf16_bits(a):
  return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def reduce(full, out):
  from safetensors.numpy import load_file, save_file
  os.makedirs(os.path.join(out, "showo2"), exist_ok=True)
  for name in ("config.json", "llm_config.json", "siglip_config.json"):
    shutil.copy(os.path.join(full, "showo2", name), os.path.join(out, "showo2", name))
  tied = json.load(open(os.path.join(full, "showo2", "llm_config.json"))).get("tie_word_embeddings")
  sd = load_file(os.path.join(full, "showo2", "model.safetensors"))
  sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items() if not (tied and k == "showo.lm_head.weight")}
  save_file(sd, os.path.join(out, "showo2", "model.safetensors"))
  d = np.load(os.path.join(full, "ref_outputs.npz"))
  positions = np.arange(0, d["A_text_tokens"].shape[1], LOGIT_STRIDE)
  res = {"A_text_tokens": d["A_text_tokens"][:1], "A_modality_positions": d["A_modality_positions"][:1],
         "A_t": d["A_t"][:1].astype(np.float32), "A_latents": bf16_bits(d["A_latents"][:1]),
         "A_logit_positions": positions}
  for v in ("fp32", "bf16", "bf16_fp32rope"):
    logits = d[f"A_logits_{v}"][:1, positions]
    vpred = d[f"A_v_pred_{v}"][:1]
    if v == "fp32":
      res[f"A_logits_{v}"], res[f"A_v_pred_{v}"] = logits.astype(np.float32), vpred.astype(np.float32)
    else:
      assert np.array_equal(bf16_bits(logits).view(ml_dtypes.bfloat16).astype(np.float32), logits)
      res[f"A_logits_{v}"], res[f"A_v_pred_{v}"] = bf16_bits(logits), bf16_bits(vpred)
  np.savez_compressed(os.path.join(out, "ref_outputs.npz"), **res)


if __name__ == "__main__":
  cmd, a, b = sys.argv[1:4]
  {"patch-script": patch_script, "reduce": reduce}[cmd](a, b)
