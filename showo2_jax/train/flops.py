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

import re
from typing import NamedTuple


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


# Compiled HLO text (`compiled.as_text()`): instructions, computations, called computations.
_HLO_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_HLO_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\]")
_HLO_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_HLO_LIST_KEYS = ("branch_computations", "called_computations")
_HLO_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")


def _hlo_split(rest: str):
  """(shape text, opcode, text after the opcode's '(') of an instruction's right-hand side."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        break
    shape, rest = rest[:i + 1], rest[i + 1:].lstrip()
  else:
    shape, _, rest = rest.partition(" ")
  op, _, args = rest.partition("(")
  return shape, op.strip(), args


def _prod(xs) -> float:
  out = 1.0
  for x in xs:
    out *= x
  return out


def _dims(shape: str):
  m = _HLO_ARRAY.match(shape)
  return [int(d) for d in m.group(2).split(",") if d] if m else None


def _conv_flops(out, lhs, rhs, args) -> float:
  """2 x the multiply-adds of an HLO convolution, as XLA's HloCostAnalysis counts
  them: per spatial dimension the (output, window) position pairs that land on an
  input element (padding and dilation holes skipped), times the batch, output
  features and input features per group."""
  m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", args)
  if not (out and lhs and rhs and m) or len(m.group(1)) != len(lhs) or len(m.group(2)) != len(rhs):
    return 0.0
  ll, rl, ol = m.groups()
  win = re.search(r"window=\{([^}]*)\}", args)
  fields = dict(f.split("=", 1) for f in win.group(1).split()) if win else {}
  nsp = len(ll) - 2
  get = lambda k, default: [int(x) for x in fields[k].split("x")] if k in fields else [default] * nsp
  size, stride = get("size", 1), get("stride", 1)
  lhs_dil, rhs_dil = get("lhs_dilate", 1), get("rhs_dilate", 1)
  pad_lo = [int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields else [0] * nsp
  valid = 1.0
  for d in range(nsp):
    n_in, n_out = lhs[ll.index(str(d))], out[ol.index(str(d))]
    count = 0
    for k in range(size[d]):
      for o in range(n_out):
        x = o * stride[d] - pad_lo[d] + k * rhs_dil[d]
        if x % lhs_dil[d] == 0 and 0 <= x // lhs_dil[d] < n_in:
          count += 1
    valid *= count
  groups = re.search(r"feature_group_count=(\d+)", args)
  bgroups = re.search(r"batch_group_count=(\d+)", args)
  fma = (lhs[ll.index("f")] / (int(groups.group(1)) if groups else 1) * rhs[rl.index("o")]
         * lhs[ll.index("b")] / (int(bgroups.group(1)) if bgroups else 1) * valid)
  return 2.0 * fma


class HloInstruction(NamedTuple):
  """One instruction of compiled HLO text: its `name`, the `computation` it is in, its
  `opcode`, its result `shape` text, `flops` (its own matmul FLOPs for one execution: 2 per multiply-add of a
  `dot` or `convolution`, 0 for any other opcode), `called` (attribute -> names of the
  computations it calls: calls, to_apply, body, condition, true/false_computation,
  branch_computations) and `args` (the text after the opcode's '(')."""
  name: str
  computation: str
  opcode: str
  shape: str
  flops: float
  called: dict
  args: str


def parse_hlo(hlo_text: str) -> tuple:
  """(computations, entry) of compiled HLO text (`compiled.as_text()`): computation
  name -> its `HloInstruction`s in order, and the ENTRY computation's name (None when
  the text has none). The one HLO parser of the package: `hlo_instruction_flops`
  (per instruction, for profiler traces) and `hlo_matmul_flops` (per program, loop
  bodies x trips) both read it."""
  comps: dict[str, list] = {}
  raw, shapes, current, entry = [], {}, None, None
  for line in hlo_text.splitlines():
    if current is None:
      m = _HLO_COMP.match(line)
      if m:
        current = m.group(1)
        comps[current] = []
        if line.startswith("ENTRY"):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _HLO_INSTR.match(line)
    if m:
      shape, op, args = _hlo_split(line[m.end():])
      shapes[m.group(1)] = shape
      raw.append((current, m.group(1), shape, op, args))
  for comp, name, shape, op, args in raw:       # operands may be defined after their use
    called = {k: [v] for k, v in _HLO_CALLS.findall(args)}
    for k, v in _HLO_CALL_LISTS.findall(args):
      called[k] = re.findall(r"%([\w.\-]+)", v)
    flops = _own_flops(op, shape, args, shapes) if op in ("dot", "convolution") else 0.0
    comps[comp].append(HloInstruction(name, comp, op, shape, flops, called, args))
  return comps, entry


def _own_flops(op: str, shape: str, args: str, shapes: dict) -> float:
  """2 x the multiply-adds of one `dot` or `convolution` (output shape text `shape`,
  operand text `args`, instruction name -> shape text `shapes`)."""
  out = _dims(shape)
  operands = re.findall(r"%([\w.\-]+)", args.split(")")[0])
  if out is None or len(operands) < 2:
    return 0.0
  if op == "dot":
    lhs = _dims(shapes.get(operands[0], ""))
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", args)
    k = _prod(lhs[int(d)] for d in m.group(1).split(",") if d) if lhs and m else 1.0
    return 2.0 * _prod(out) * k
  return _conv_flops(out, _dims(shapes.get(operands[0], "")), _dims(shapes.get(operands[1], "")),
                     args)


def hlo_instruction_flops(hlo_text: str) -> dict:
  """HLO instruction name -> matmul FLOPs of one execution of it: a `dot`'s or
  `convolution`'s own, or for an instruction that runs computations inside itself
  (`calls=`: a fusion) the FLOPs of every instruction in them, recursively.
  Loops, conditionals and calls (`body=`, `branch_computations=`, `to_apply=`)
  get none of their bodies' FLOPs: their instructions run, and are traced, on their
  own. Instructions without matmul FLOPs are absent; names are unique in a module.
  What benchmarks/profile_ops.py multiplies by the executions a profiler trace saw."""
  comps, _ = parse_hlo(hlo_text)
  memo: dict[str, float] = {}

  def inline(comp: str) -> float:
    if comp not in memo:
      memo[comp] = 0.0                     # guards against cycles (none in valid HLO)
      memo[comp] = sum(one(i) for i in comps.get(comp, []))
    return memo[comp]

  def one(instr: HloInstruction) -> float:
    return instr.flops + sum(inline(c) for c in instr.called.get("calls", []))

  out = {i.name: one(i) for body in comps.values() for i in body}
  return {k: v for k, v in out.items() if v > 0}


def hlo_matmul_flops(hlo_text: str) -> dict:
  """Matmul FLOPs (2 per multiply-add of every `dot` and `convolution`, TPU writes
  most dots as convolutions) of compiled HLO text, per device, with every while
  loop's body counted as many times as it runs: {"flops", "loops": [(body, trips)],
  "unknown_trips": n}. A loop's trip count is read from XLA's `known_trip_count`
  when the HLO carries one, else from its condition `counter < constant` (what a
  `lax.scan` compiles to, its counter starting at 0); a loop with neither counts
  once and is counted in "unknown_trips". Conditionals count their costliest
  branch; custom calls (Pallas kernels) count nothing. This is the compiled
  program's count, remat recompute and XLA's rewrites included, so it is XLA's
  count with scanned layers counted per layer (its `cost_analysis` counts a
  loop body once). Per instruction: `parse_hlo`."""
  comps, entry = parse_hlo(hlo_text)
  consts = {i.name: int(i.args.split(")")[0]) for body in comps.values() for i in body
            if i.opcode == "constant" and i.shape.startswith("s32[]")}

  def trips(loop: HloInstruction):
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.args)
    if m:
      return int(m.group(1))
    for i in reversed(comps.get(loop.called.get("condition", [""])[0], [])):
      if i.opcode == "compare" and "direction=LT" in i.args:
        operands = re.findall(r"%([\w.\-]+)", i.args.split(")")[0])
        if len(operands) == 2 and operands[1] in consts:
          return consts[operands[1]]
    return None

  memo, loops, unknown = {}, [], [0]

  def total(comp: str) -> float:
    if comp in memo:
      return memo[comp]
    memo[comp] = 0.0                       # guards against cycles (none in valid HLO)
    flops = 0.0
    for i in comps.get(comp, []):
      flops += i.flops
      if i.opcode == "while":
        body, n = i.called.get("body", [""])[0], trips(i)
        if n is None:
          unknown[0] += 1
        loops.append((body, n))
        flops += (n or 1) * total(body)
        continue
      branches = i.called.get("branch_computations", []) + [
          c for k in ("true_computation", "false_computation") for c in i.called.get(k, [])]
      if i.opcode == "conditional" and branches:
        flops += max(total(b) for b in branches)
        continue
      flops += sum(total(c) for k, cs in i.called.items() if k not in _HLO_LIST_KEYS for c in cs)
    memo[comp] = flops
    return flops

  return {"flops": total(entry) if entry else 0.0, "loops": loops, "unknown_trips": unknown[0]}
