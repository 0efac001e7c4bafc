"""Model architectures shared by the configs (every constant of the original).

Sizes follow section 1 of the spec. `image_latent_height/width` are in patch units
(tokens per side), as in the original's config.json.
"""
import ml_collections

# Wan2.1 latent normalisation (spec 6.5): the real 16-channel constants.
WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def flow_head(**kw):
  """The flow head the original hard-codes (DiffusionHeadConfig)."""
  c = ml_collections.ConfigDict(dict(
      hidden_size=2048, intermediate_size=8192, num_layers=10, num_heads=32, num_kv_heads=8,
      head_dim=64, rms_norm_eps=1e-5, qk_norm_eps=1e-6, final_norm_eps=1e-6, rope_theta=5e5,
      rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)))
  c.update(kw)
  return c


def siglip_so400m():
  """SigLIP so400m-patch14-384 vision tower minus its last (27th) layer."""
  return ml_collections.ConfigDict(dict(
      hidden_size=1152, intermediate_size=4304, num_layers=26, num_heads=16,
      layer_norm_eps=1e-6, position_grid=27))


def _model(llm, siglip, flow, tokens_per_side):
  return ml_collections.ConfigDict(dict(
      llm=llm, siglip=siglip, flow_head=flow, latent_channels=16, patch_size=2,
      image_latent_height=tokens_per_side, image_latent_width=tokens_per_side,
      add_time_embeds=True, time_embed_dim=256, fusion_norm_eps=1e-6,
      dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=False,
      # "dense" (reference) or "chunked" (same numbers, O(chunk * L) attention memory).
      attention_impl="dense", attention_chunk_size=512,
      # "compute": RoPE inv_freq rounded to the compute dtype as in the original's bf16
      # runs (its training and inference); "float32": exact. See docs/inference.md.
      rope_inv_freq_dtype="compute"))


def showo2_1p5b(tokens_per_side=27):
  """Qwen2.5-1.5B-Instruct backbone, tied embeddings."""
  llm = ml_collections.ConfigDict(dict(
      vocab_size=151669, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
      num_kv_heads=2, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True))
  return _model(llm, siglip_so400m(), flow_head(), tokens_per_side)


def showo2_7b(tokens_per_side=27):
  """Qwen2.5-7B-Instruct backbone, untied lm_head."""
  llm = ml_collections.ConfigDict(dict(
      vocab_size=151669, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
      num_kv_heads=4, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False))
  return _model(llm, siglip_so400m(), flow_head(), tokens_per_side)


def tiny():
  """The fixture-sized model (../shared/fixtures/showo2): seconds to compile on CPU."""
  llm = ml_collections.ConfigDict(dict(
      vocab_size=312, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True))
  siglip = ml_collections.ConfigDict(dict(
      hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, layer_norm_eps=1e-6,
      position_grid=4))
  flow = flow_head(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8)
  return _model(llm, siglip, flow, 4)


def small():
  """`small` of shared/docs/BENCHMARKS.md (~75M parameters, 432 px)."""
  llm = ml_collections.ConfigDict(dict(
      vocab_size=32012, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8,
      num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True))
  siglip = ml_collections.ConfigDict(dict(
      hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6, layer_norm_eps=1e-6,
      position_grid=27))
  flow = flow_head(hidden_size=512, intermediate_size=2048, num_layers=4, num_heads=8,
                   num_kv_heads=2, head_dim=64)
  c = _model(llm, siglip, flow, 27)
  # Chosen by measurement on a 2-core CPU (docs/performance.md): `chunked` at 128
  # query rows takes ~3x less CPU than `dense` for the attention core and 1.36x
  # less for the whole small_train step (same numbers). Remat and layer scan stay
  # off: memory is ample at this size and remat only adds recomputation (not timed).
  c.attention_impl, c.attention_chunk_size = "chunked", 128
  return c


def wan_vae():
  """Wan2.1 VAE (z_dim 16, 8x spatial / 4x temporal)."""
  return ml_collections.ConfigDict(dict(
      dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
      temperal_downsample=[False, True, True], latents_mean=list(WAN_LATENTS_MEAN),
      latents_std=list(WAN_LATENTS_STD)))


def wan_vae_tiny():
  """The fixture-sized VAE (../shared/fixtures/wan_vae)."""
  c = wan_vae()
  c.dim = 8
  return c
