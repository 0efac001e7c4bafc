"""An independent PyTorch reference of the original Show-o2 forward pass.

Written from the spec (shared/docs/SHOWO2_SPEC.md, sections 1, 2, 3, 9.1, 10.4), not
from our JAX code, to generate golden fixtures for configurations the shipped fixture
does not cover. It is deliberately literal and loop-based, laid out like the original:
one `nn.Module` whose state_dict keys are the original's, the LLM an HF
`Qwen2ForCausalLM` driven with `inputs_embeds` and the naive additive 4D omni mask, the
semantic layers HF `SiglipEncoderLayer`s, and everything else (flow head, time
embedder, fusion, scatter, label placement, losses, un-patchify) written out by hand.

CPU, float32 only. `Showo2TorchRef.from_dir(path)` builds the module from a fixture
directory (config.json, llm_config.json, siglip_config.json) and loads its weights.
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer


# --------------------------------------------------------------------------- config
def qwen2_config(llm_json: dict) -> Qwen2Config:
  """HF Qwen2 config (vocab before the Show-o2 resize) with eager attention."""
  cfg = Qwen2Config(
      vocab_size=llm_json["vocab_size"],
      hidden_size=llm_json["hidden_size"],
      intermediate_size=llm_json["intermediate_size"],
      num_hidden_layers=llm_json["num_hidden_layers"],
      num_attention_heads=llm_json["num_attention_heads"],
      num_key_value_heads=llm_json["num_key_value_heads"],
      rms_norm_eps=llm_json["rms_norm_eps"],
      rope_theta=llm_json["rope_theta"],
      max_position_embeddings=llm_json.get("max_position_embeddings", 32768),
      tie_word_embeddings=llm_json["tie_word_embeddings"],
      use_sliding_window=False,
      attention_dropout=0.0,
      hidden_act="silu",
  )
  cfg._attn_implementation = "eager"  # adds our additive 4D mask to the scores as given
  return cfg


def siglip_config(siglip_json: dict) -> SiglipVisionConfig:
  cfg = SiglipVisionConfig(
      hidden_size=siglip_json["hidden_size"],
      intermediate_size=siglip_json["intermediate_size"],
      num_hidden_layers=siglip_json["num_hidden_layers"],
      num_attention_heads=siglip_json["num_attention_heads"],
      image_size=siglip_json["image_size"],
      patch_size=siglip_json["patch_size"],
      layer_norm_eps=siglip_json["layer_norm_eps"],
      hidden_act=siglip_json.get("hidden_act", "gelu_pytorch_tanh"),
      attention_dropout=0.0,
  )
  cfg._attn_implementation = "eager"
  return cfg


# --------------------------------------------------------------------------- small modules
class RMSNorm(nn.Module):
  """fp32 normalisation, cast back, then the weight (spec 2.6)."""

  def __init__(self, dim, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight * h.to(dtype)


class PatchEmbed(nn.Module):
  """Conv2d(C -> dim, kernel p, stride p); tokens in row-major (h, w) order."""

  def __init__(self, in_chans, dim, patch_size):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True)

  def forward(self, x):
    x = self.proj(x)                      # (K, dim, h, w)
    return x.flatten(2).transpose(1, 2)   # (K, h*w, dim)


class SemanticLayers(nn.Module):
  """SigLIP vision encoder layers minus the last; no post-layernorm, no head."""

  def __init__(self, cfg: SiglipVisionConfig):
    super().__init__()
    self.layers = nn.ModuleList([SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers - 1)])

  def forward(self, x):
    for layer in self.layers:
      x = layer(x, None)
    return x


class TimestepEmbedder(nn.Module):
  """Cos-first sinusoid of raw t in [0, 1] (256 dims), then Linear -> SiLU -> Linear."""

  def __init__(self, hidden_size, frequency_embedding_size=256):
    super().__init__()
    self.frequency_embedding_size = frequency_embedding_size
    self.mlp = nn.Sequential(
        nn.Linear(frequency_embedding_size, hidden_size, bias=True),
        nn.SiLU(),
        nn.Linear(hidden_size, hidden_size, bias=True),
    )

  @staticmethod
  def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
      emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb

  def forward(self, t):
    freq = self.timestep_embedding(t, self.frequency_embedding_size)
    return self.mlp(freq.to(self.mlp[0].weight.dtype))


def modulate(x, shift, scale):
  dtype = x.dtype
  return (x.float() * (1 + scale.float()) + shift.float()).to(dtype)


def llama3_inv_freq(head_dim, theta, rope_scaling):
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
  if not rope_scaling:
    return inv_freq
  factor = rope_scaling["factor"]
  low_freq_factor = rope_scaling["low_freq_factor"]
  high_freq_factor = rope_scaling["high_freq_factor"]
  old_context_len = rope_scaling["original_max_position_embeddings"]
  low_freq_wavelen = old_context_len / low_freq_factor
  high_freq_wavelen = old_context_len / high_freq_factor
  out = []
  for f in inv_freq.tolist():
    wavelen = 2 * math.pi / f
    if wavelen < high_freq_wavelen:
      out.append(f)
    elif wavelen > low_freq_wavelen:
      out.append(f / factor)
    else:
      s = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
      out.append((1 - s) * f / factor + s * f)
  return torch.tensor(out, dtype=torch.float32)


def rotate_half(x):
  x1 = x[..., : x.shape[-1] // 2]
  x2 = x[..., x.shape[-1] // 2:]
  return torch.cat((-x2, x1), dim=-1)


class FlowAttention(nn.Module):
  """GQA attention with qk RMSNorm (eps 1e-6) before llama3 RoPE; no biases."""

  def __init__(self, fh):
    super().__init__()
    self.num_heads = fh["num_attention_heads"]
    self.num_kv_heads = fh["num_key_value_heads"]
    self.head_dim = fh["head_dim"]
    hidden = fh["hidden_size"]
    self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
    self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
    self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
    self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
    self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
    self.k_norm = RMSNorm(self.head_dim, eps=1e-6)

  def forward(self, x, attention_mask, cos, sin):
    b, l, _ = x.shape
    q = self.q_norm(self.q_proj(x).view(b, l, self.num_heads, self.head_dim)).transpose(1, 2)
    k = self.k_norm(self.k_proj(x).view(b, l, self.num_kv_heads, self.head_dim)).transpose(1, 2)
    v = self.v_proj(x).view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2)
    cos, sin = cos.to(x.dtype)[None, None], sin.to(x.dtype)[None, None]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    groups = self.num_heads // self.num_kv_heads
    k = torch.repeat_interleave(k, groups, dim=1)   # query head h uses kv head h // groups
    v = torch.repeat_interleave(v, groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
    scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, l, self.num_heads * self.head_dim)
    return self.o_proj(out)


class FlowMLP(nn.Module):

  def __init__(self, hidden, intermediate):
    super().__init__()
    self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
    self.up_proj = nn.Linear(hidden, intermediate, bias=False)
    self.down_proj = nn.Linear(intermediate, hidden, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def modulation_maps(vectors, defaults, modality_positions, batch, length):
  """Per-position (B, L, D) maps: identity value everywhere, slot vectors on [o, o+n).

  vectors: list of (K, D) per-slot tensors, K = B*M in slot order; a later slot wins.
  """
  num_slots = modality_positions.shape[1]
  maps = []
  for vec, default in zip(vectors, defaults):
    m = torch.full((batch, length, vec.shape[-1]), float(default), dtype=vec.dtype)
    for i in range(batch):
      for j in range(num_slots):
        o, n = int(modality_positions[i, j, 0]), int(modality_positions[i, j, 1])
        k = i * num_slots + j
        for pos in range(o, o + n):
          m[i, pos] = vec[k]
    maps.append(m)
  return maps


class ModulatedAttentionBlock(nn.Module):

  def __init__(self, fh):
    super().__init__()
    hidden = fh["hidden_size"]
    self.input_layernorm = RMSNorm(hidden, eps=fh["rms_norm_eps"])
    self.self_attn = FlowAttention(fh)
    self.post_attention_layernorm = RMSNorm(hidden, eps=fh["rms_norm_eps"])
    self.mlp = FlowMLP(hidden, fh["intermediate_size"])
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden, bias=True))

  def forward(self, x, te, modality_positions, attention_mask, cos, sin):
    b, l, _ = x.shape
    chunks = list(self.adaLN_modulation(te).chunk(6, dim=-1))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation_maps(
        chunks, [0, 0, 1, 0, 0, 1], modality_positions, b, l)
    h = x
    a = self.self_attn(modulate(self.input_layernorm(h), shift_msa, scale_msa), attention_mask, cos, sin)
    h = h + gate_msa * a
    m = self.mlp(modulate(self.post_attention_layernorm(h), shift_mlp, scale_mlp))
    h = h + gate_mlp * m
    return h


class FinalLayer(nn.Module):

  def __init__(self, hidden, out_dim):
    super().__init__()
    self.norm_final = RMSNorm(hidden, eps=1e-6)
    self.linear = nn.Linear(hidden, out_dim, bias=True)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=True))

  def forward(self, x, te, modality_positions):
    b, l, _ = x.shape
    shift, scale = modulation_maps(list(self.adaLN_modulation(te).chunk(2, dim=-1)), [0, 0],
                                   modality_positions, b, l)
    return self.linear(modulate(self.norm_final(x), shift, scale))


# --------------------------------------------------------------------------- mask
def omni_attn_mask_naive(batch, length, modality_positions, dtype=torch.float32):
  """The original's naive builder: int64 causal + block squares, inverted to iinfo.min."""
  mask = torch.tril(torch.ones((batch, 1, length, length), dtype=torch.long))
  for i in range(batch):
    for j in range(modality_positions.shape[1]):
      o, n = int(modality_positions[i, j, 0]), int(modality_positions[i, j, 1])
      mask[i, :, o:o + n, o:o + n] = 1
  inverted = 1 - mask
  inverted = inverted.masked_fill(inverted.to(torch.bool), torch.iinfo(torch.long).min)
  return inverted.to(dtype)


def omni_allow(additive_mask):
  """Boolean allow-matrix (True = may attend) of an additive mask."""
  return additive_mask == 0


# --------------------------------------------------------------------------- model
class Showo2TorchRef(nn.Module):
  """Show-o2 (`Showo2Qwen2_5`) forward, float32, with the original's key names."""

  def __init__(self, config: dict, llm_json: dict, siglip_json: dict):
    super().__init__()
    self.config = dict(config)
    fh = dict(config["flow_head"])
    self.flow_cfg = fh
    d = config["hidden_size"]
    dh = fh["hidden_size"]
    c = config["image_latent_dim"]
    p = config["patch_size"]
    clip = config["clip_latent_dim"]
    self.patch_size = p
    self.latent_dim = c

    self.showo = Qwen2ForCausalLM(qwen2_config(llm_json))
    self.showo.resize_token_embeddings(config["llm_vocab_size"], mean_resizing=False)

    scfg = siglip_config(siglip_json)
    assert scfg.hidden_size == clip, (scfg.hidden_size, clip)
    self.image_embedder_und = PatchEmbed(c, clip, p)
    self.image_embedder_gen = PatchEmbed(c, d, p)
    self.num_positions = (scfg.image_size // scfg.patch_size) ** 2
    self.position_embedding = nn.Embedding(self.num_positions, clip)
    self.und_trans = SemanticLayers(scfg)
    self.fusion_proj = nn.Sequential(
        RMSNorm(clip + d, eps=1e-6),
        nn.Linear(clip + d, d, bias=True),
        nn.GELU(),
        nn.Linear(d, d, bias=True),
    )
    self.time_embed = TimestepEmbedder(dh)
    if d != dh:
      self.time_embed_proj = nn.Linear(dh, d, bias=True)
      self.diff_proj = nn.Sequential(nn.Linear(d, dh, bias=True), nn.GELU(), nn.Linear(dh, dh, bias=True))
    else:
      self.time_embed_proj = None
      self.diff_proj = None
    self.diffusion_head_a = nn.ModuleList(
        [ModulatedAttentionBlock(fh) for _ in range(config["num_diffusion_layers"])])
    self.diffusion_head_b = FinalLayer(dh, p * p * c)
    self.inv_freq = llama3_inv_freq(fh["head_dim"], fh["rope_theta"], fh.get("rope_scaling"))

  # ----------------------------------------------------------------- loading
  @classmethod
  def from_dir(cls, path: str, load_weights: bool = True) -> "Showo2TorchRef":
    jsons = []
    for name in ("config.json", "llm_config.json", "siglip_config.json"):
      with open(os.path.join(path, name)) as f:
        jsons.append(json.load(f))
    model = cls(*jsons)
    if load_weights:
      from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
      sd = load_file(os.path.join(path, "model.safetensors"))
      if "showo.lm_head.weight" not in sd:
        sd["showo.lm_head.weight"] = sd["showo.model.embed_tokens.weight"]
      model.load_state_dict(sd, strict=True)
    return model.eval()

  # ----------------------------------------------------------------- pieces
  def position_table(self, h, w):
    """The SigLIP table, bicubic-resized (torch semantics) to (h, w) when the config
    grid differs from the table's; flattened row-major."""
    table = self.position_embedding.weight
    cfg_n = self.config["image_latent_height"] * self.config["image_latent_width"]
    if self.num_positions == cfg_n:
      return table
    g = int(round(math.sqrt(self.num_positions)))
    grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(h * w, -1)

  def rope(self, length):
    pos = torch.arange(length, dtype=torch.float32)
    freqs = pos[:, None] * self.inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()

  def visual_tokens(self, image_latents):
    """(K, C, H, W) or (K, C, T, H, W) -> fused tokens (K, N or T*N, D)."""
    x = image_latents.to(self.showo.model.embed_tokens.weight.dtype)
    video = x.dim() == 5
    if video:
      k_, c, t_, hh, ww = x.shape
      x = x.permute(0, 2, 1, 3, 4).reshape(k_ * t_, c, hh, ww)   # time-major inside a slot
    else:
      k_, c, hh, ww = x.shape
      t_ = 1
    h, w = hh // self.patch_size, ww // self.patch_size
    und = self.image_embedder_und(x)                # (K*T, N, clip)
    gen = self.image_embedder_gen(x)                # (K*T, N, D)
    und = und + self.position_table(h, w)[None]
    und = self.und_trans(und)
    if video:
      und = und.reshape(k_, t_ * h * w, -1)
      gen = gen.reshape(k_, t_ * h * w, -1)
    return self.fusion_proj(torch.cat([und, gen], dim=-1))

  def patchify_labels(self, labels):
    """Raster-quad label layout (spec 2.3): (K, C, [T,] H, W) -> (K, [T*]N, p*p*C)."""
    k_, c = labels.shape[:2]
    pp = self.patch_size * self.patch_size
    if labels.dim() == 5:
      _, _, t_, hh, ww = labels.shape
      flat = labels.permute(0, 2, 3, 4, 1).reshape(k_, t_ * hh * ww, c)
      return flat.reshape(k_, t_ * hh * ww // pp, pp * c)
    _, _, hh, ww = labels.shape
    flat = labels.permute(0, 2, 3, 1).reshape(k_, hh * ww, c)
    return flat.reshape(k_, hh * ww // pp, pp * c)

  def unpatchify(self, tokens, latent_shape):
    """(n, [T*]N, p*p*C) -> (n, C, [T,] H, W), the non-spatial quirk of spec 2.3."""
    n = tokens.shape[0]
    c = self.latent_dim
    pp = self.patch_size * self.patch_size
    if len(latent_shape) == 3:
      t_, hh, ww = latent_shape
      x = tokens.reshape(n, t_, (tokens.shape[1] // t_) * pp, c)
      x = x.permute(0, 3, 1, 2)
      return x.reshape(n, c, t_, hh, ww)
    hh, ww = latent_shape
    x = tokens.reshape(n, tokens.shape[1] * pp, c).permute(0, 2, 1)
    return x.reshape(n, c, hh, ww)

  # ----------------------------------------------------------------- forward
  def forward(self, text_tokens, image_latents, t, attention_mask, modality_positions,
              text_labels=None, image_labels=None, image_masks=None):
    b, l = text_tokens.shape
    num_slots = modality_positions.shape[1]
    input_embeds = self.showo.model.embed_tokens(text_tokens)          # (B, L, D)
    dtype = input_embeds.dtype
    visual = self.visual_tokens(image_latents)                         # (K, N', D)
    te = self.time_embed(t.to(dtype))                                  # (K, Dh)
    tp = self.time_embed_proj(te) if self.time_embed_proj is not None else te

    input_embeds = input_embeds.clone()
    for i in range(b):
      for j in range(num_slots):
        o, n = int(modality_positions[i, j, 0]), int(modality_positions[i, j, 1])
        k = i * num_slots + j
        input_embeds[i, o] = tp[k]              # also for empty (0, 0) slots (spec 10.4)
        if n > 0:
          input_embeds[i, o + 1:o + n] = visual[k, :n - 1]

    # The original takes `hidden_states[-1]` of `showo(...)`: the final-norm output that the
    # lm_head consumes. Asked for explicitly here (transformers releases differ in what
    # they put last in `hidden_states`).
    hidden = self.showo.model(inputs_embeds=input_embeds, attention_mask=attention_mask).last_hidden_state
    logits = self.showo.lm_head(hidden)

    x = self.diff_proj(hidden) if self.diff_proj is not None else hidden
    cos, sin = self.rope(l)
    for block in self.diffusion_head_a:
      x = block(x, te, modality_positions, attention_mask, cos, sin)
    v_tok = self.diffusion_head_b(x, te, modality_positions)          # (B, L, p*p*C)

    result = {"logits": logits, "v_tok": v_tok, "hidden": hidden}
    if text_labels is not None:
      result["loss_ntp"] = F.cross_entropy(
          logits[:, :-1].reshape(-1, logits.shape[-1]).float(), text_labels[:, 1:].reshape(-1),
          ignore_index=-100)
    if image_labels is not None:
      placed = torch.zeros_like(v_tok)
      targets = self.patchify_labels(image_labels.to(dtype))
      for i in range(b):
        for j in range(num_slots):
          o, n = int(modality_positions[i, j, 0]), int(modality_positions[i, j, 1])
          if n > 0:
            placed[i, o + 1:o + n] = targets[i * num_slots + j, :n - 1]
      mask = image_masks[:, :, None].repeat(1, 1, v_tok.shape[-1]).clone()
      for i in range(b):
        for j in range(num_slots):
          mask[i, int(modality_positions[i, j, 0])] = 0
      sel = mask.to(torch.bool)
      result["loss_flow"] = F.mse_loss(v_tok[sel].float(), placed[sel].float())
    # Generation output: per row, slots up to the first empty one, time slot dropped.
    per_image = []
    for i in range(b):
      for j in range(num_slots):
        o, n = int(modality_positions[i, j, 0]), int(modality_positions[i, j, 1])
        if n == 0:
          break
        per_image.append(v_tok[i, o + 1:o + n])
    if per_image:
      result["v_pred"] = self.unpatchify(torch.stack(per_image), tuple(image_latents.shape[2:]))
    return result

  def forward_text(self, text_tokens):
    """Pure-text causal LM (no mask given: the causal default)."""
    return self.showo(input_ids=text_tokens).logits
