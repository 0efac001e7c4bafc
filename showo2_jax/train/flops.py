"""Model FLOPs of a training step, for MFU (the formula the benchmarks state).

Counted per row of L tokens with M images of N patches, matmuls only (2 FLOPs
per multiply-add), forward pass:
  LLM, per layer:   2L(2D*H*hd + 2D*KV*hd) + 4L^2*H*hd + 2L*3*D*I
  LM head:          2L*D*V
  diff_proj:        2L(D*Dh + Dh*Dh)                    (when D != Dh)
  flow head/layer:  2L(2Dh*Hf*hf + 2Dh*KVf*hf) + 4L^2*Hf*hf + 2L*3*Dh*If
  final layer:      2L*Dh*p^2*C
  per image:        SigLIP layers 2N*4*Ds^2 + 4N^2*Ds + 2N*2*Ds*Is each,
                    patch embeds 2N*p^2*C*(Ds + D), fusion 2N((Ds+D)*D + D*D)
Training = 3 x forward (backward = 2 x forward). Rematerialisation is not
counted (model FLOPs, not hardware FLOPs); attention over the full L x L
matrix is counted (the omni mask is dense), adaLN/time embeddings are ignored.
"""
from __future__ import annotations


def forward_flops_by_part(model, seq_len: int, images_per_row: int) -> dict:
  """Forward model FLOPs of one row by part (the terms of the module docstring): LLM
  attention (q/k/v/o projections and the L x L matmuls), LLM MLP, lm_head, SigLIP,
  flow head attention, flow head rest (its MLPs, diff_proj, final layer),
  projector/STF (patch embeddings, fusion): the parts of benchmarks/profile_ops.py's
  "by module" table."""
  llm, sig, fh = model.llm, model.siglip, model.flow_head
  L, D, dh = seq_len, llm.hidden_size, fh.hidden_size
  attn = lambda d, h, kv, hd: 2 * L * (2 * d * h * hd + 2 * d * kv * hd) + 4 * L * L * h * hd
  p2c = model.patch_size ** 2 * model.latent_channels
  n, ds = model.image_latent_height * model.image_latent_width, sig.hidden_size
  parts = {
      "LLM attention": llm.num_layers * attn(D, llm.num_heads, llm.num_kv_heads, llm.head_dim),
      "LLM MLP": llm.num_layers * 2 * L * 3 * D * llm.intermediate_size,
      "lm_head": 2 * L * D * llm.vocab_size,
      "SigLIP": images_per_row * sig.num_layers * (2 * n * 4 * ds * ds + 4 * n * n * ds
                                                   + 2 * n * 2 * ds * sig.intermediate_size),
      "flow head attention": fh.num_layers * attn(dh, fh.num_heads, fh.num_kv_heads, fh.head_dim),
      "flow head rest": (fh.num_layers * 2 * L * 3 * dh * fh.intermediate_size + 2 * L * dh * p2c
                         + (2 * L * (D * dh + dh * dh) if D != dh else 0)),
      "projector/STF": images_per_row * (2 * n * p2c * (ds + D) + 2 * n * ((ds + D) * D + D * D)),
  }
  return {k: float(v) for k, v in parts.items()}


def forward_flops_per_row(model, seq_len: int, images_per_row: int) -> float:
  return float(sum(forward_flops_by_part(model, seq_len, images_per_row).values()))


def train_flops_per_step(model, seq_len: int, images_per_row: int, global_batch: int) -> float:
  return 3.0 * global_batch * forward_flops_per_row(model, seq_len, images_per_row)


def train_flops_by_part(model, seq_len: int, images_per_row: int, global_batch: int) -> dict:
  """`train_flops_per_step` split by part (`forward_flops_by_part` x 3 x batch)."""
  return {k: 3.0 * global_batch * v
          for k, v in forward_flops_by_part(model, seq_len, images_per_row).items()}


def _dot_flops(eqn) -> float:
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  out = 1.0
  for d in eqn.outvars[0].aval.shape:
    out *= d
  k = 1.0
  for d in lc:
    k *= lhs[d]
  return 2.0 * out * k


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      j = getattr(x, "jaxpr", x)
      if hasattr(j, "eqns"):
        yield j


def jaxpr_matmul_flops(jaxpr) -> float:
  """Matmul FLOPs (2 per multiply-add of every dot_general) a jaxpr executes:
  scan bodies times their length, the costliest branch of a cond, shard_map
  bodies times the number of shards, remat'd forward passes as often as they run
  (so rematerialisation is counted, unlike the model formula). Pallas kernels
  (splash) are opaque and not counted; while loops count their body once."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
    elif name == "shard_map":
      shards = 1
      for s in dict(eqn.params["mesh"].shape).values():
        shards *= s
      total += shards * jaxpr_matmul_flops(eqn.params["jaxpr"])
    elif name == "pallas_call":
      continue
    else:
      total += sum(jaxpr_matmul_flops(j) for j in _sub_jaxprs(eqn))
  return total
