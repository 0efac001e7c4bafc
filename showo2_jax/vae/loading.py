"""Wan2.1 VAE checkpoints <-> Flax params of `showo2_jax.vae.wan`.

One table (`param_table(cfg)`) lists every tensor with its original key (as in
`Wan2.1_VAE.pth`, spec 9.2), its diffusers `AutoencoderKLWan` key, its Flax path, its
PyTorch shape and its layout hook; both directions of the conversion read it, so they
cannot drift apart. The hooks, entries and key matching are the package's one mapping
layer (`showo2_jax.param_mapping`): conv weights (out, in, k...) -> (k..., in, out)
(`conv`); the attention's 1x1 convs (out, in, 1, 1) -> Dense (in, out) (`conv1x1_dense`);
RMS_norm gammas (C, 1, 1[, 1]) -> (C,) (`gamma`); biases as they are (`copy`).

`.pth` files are read with `torch.load(weights_only=True)` (no pickled code runs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from showo2_jax import param_mapping
from showo2_jax.vae import wan
from showo2_jax.vae.wan import WanVAEConfig


class WanVAECheckpointError(ValueError):
  """A checkpoint does not match the VAE config: lists every offending key."""


@dataclasses.dataclass(frozen=True)
class ParamEntry:
  original_key: str
  diffusers_key: str
  flax_path: tuple[str, ...]
  torch_shape: tuple[int, ...]
  kind: str  # the param_mapping.HOOKS name: "conv" | "conv1x1_dense" | "gamma" | "copy"

  def entry(self, layout: str) -> param_mapping.Entry:
    """This tensor as a param_mapping entry, keyed in `layout` ('original' | 'diffusers')."""
    key = self.original_key if layout == "original" else self.diffusers_key
    return param_mapping.Entry(key, "/".join(self.flax_path), None, self.kind, self.torch_shape)


def param_table(cfg: WanVAEConfig) -> list[ParamEntry]:
  """Every tensor of the VAE described by `cfg`, in the original's state_dict order."""
  table: list[ParamEntry] = []

  def add(orig, diff, path, shape, kind):
    table.append(ParamEntry(orig, diff, tuple(path), tuple(shape), kind))

  def join(prefix, name):
    return f"{prefix}.{name}"

  def conv(orig, diff, path, cin, cout, kernel):
    add(f"{orig}.weight", join(diff, "weight"), path + ("kernel",), (cout, cin) + kernel, "conv")
    add(f"{orig}.bias", join(diff, "bias"), path + ("bias",), (cout,), "copy")

  def gamma(orig, diff, path, c, images=False):
    add(f"{orig}.gamma", join(diff, "gamma"), path + ("gamma",),
        (c, 1, 1) if images else (c, 1, 1, 1), "gamma")

  def residual(orig, diff, path, cin, cout):
    gamma(f"{orig}.residual.0", join(diff, "norm1"), path + ("norm1",), cin)
    conv(f"{orig}.residual.2", join(diff, "conv1"), path + ("conv1",), cin, cout, (3, 3, 3))
    gamma(f"{orig}.residual.3", join(diff, "norm2"), path + ("norm2",), cout)
    conv(f"{orig}.residual.6", join(diff, "conv2"), path + ("conv2",), cout, cout, (3, 3, 3))
    if cin != cout:
      conv(f"{orig}.shortcut", join(diff, "conv_shortcut"), path + ("shortcut",), cin, cout,
           (1, 1, 1))

  def attention(orig, diff, path, c):
    gamma(f"{orig}.norm", join(diff, "norm"), path + ("norm",), c, images=True)
    for name, cout in (("to_qkv", 3 * c), ("proj", c)):
      add(f"{orig}.{name}.weight", join(diff, f"{name}.weight"), path + (name, "kernel"),
          (cout, c, 1, 1), "conv1x1_dense")
      add(f"{orig}.{name}.bias", join(diff, f"{name}.bias"), path + (name, "bias"), (cout,),
          "copy")

  def layer(kind, orig, diff, path, cin, cout):
    if kind == "residual":
      residual(orig, diff, path, cin, cout)
    else:
      conv(f"{orig}.resample.1", join(diff, "resample.1"), path + ("resample",), cin, cout,
           (3, 3))
      if kind == "downsample3d":
        conv(f"{orig}.time_conv", join(diff, "time_conv"), path + ("time_conv",), cin, cin,
             (3, 1, 1))
      elif kind == "upsample3d":
        conv(f"{orig}.time_conv", join(diff, "time_conv"), path + ("time_conv",), cin, 2 * cin,
             (3, 1, 1))

  def middle(part, c):
    path = (part,)
    residual(f"{part}.middle.0", f"{part}.mid_block.resnets.0", path + ("middle_0",), c, c)
    attention(f"{part}.middle.1", f"{part}.mid_block.attentions.0", path + ("middle_1",), c)
    residual(f"{part}.middle.2", f"{part}.mid_block.resnets.1", path + ("middle_2",), c, c)

  z, enc_c = cfg.z_dim, wan.middle_dims(cfg)[0]
  conv("encoder.conv1", "encoder.conv_in", ("encoder", "conv1"), 3, cfg.dim, (3, 3, 3))
  for i, (kind, cin, cout) in enumerate(wan.encoder_layout(cfg)):
    layer(kind, f"encoder.downsamples.{i}", f"encoder.down_blocks.{i}",
          ("encoder", f"downsamples_{i}"), cin, cout)
  middle("encoder", enc_c)
  gamma("encoder.head.0", "encoder.norm_out", ("encoder", "head_norm"), enc_c)
  conv("encoder.head.2", "encoder.conv_out", ("encoder", "head_conv"), enc_c, 2 * z, (3, 3, 3))
  conv("conv1", "quant_conv", ("conv1",), 2 * z, 2 * z, (1, 1, 1))
  conv("conv2", "post_quant_conv", ("conv2",), z, z, (1, 1, 1))

  dec_c = wan.middle_dims(cfg)[1]
  conv("decoder.conv1", "decoder.conv_in", ("decoder", "conv1"), z, dec_c, (3, 3, 3))
  middle("decoder", dec_c)
  stage, block = 0, 0
  for i, (kind, cin, cout) in enumerate(wan.decoder_layout(cfg)):
    if kind == "residual":
      diff = f"decoder.up_blocks.{stage}.resnets.{block}"
      block += 1
    else:
      diff = f"decoder.up_blocks.{stage}.upsamplers.0"
      stage, block = stage + 1, 0
    layer(kind, f"decoder.upsamples.{i}", diff, ("decoder", f"upsamples_{i}"), cin, cout)
  out_c = cfg.dim * cfg.dim_mult[0]
  gamma("decoder.head.0", "decoder.norm_out", ("decoder", "head_norm"), out_c)
  conv("decoder.head.2", "decoder.conv_out", ("decoder", "head_conv"), out_c, 3, (3, 3, 3))
  return table


# ----------------------------------------------------------------------------- conversion


def detect_layout(keys) -> str:
  """'diffusers' for AutoencoderKLWan key names, else 'original' (Wan2.1_VAE.pth)."""
  keys = set(keys)
  if any(k.startswith(("quant_conv.", "encoder.conv_in.", "decoder.conv_in.")) for k in keys):
    return "diffusers"
  return "original"


def _format_problems(layout, missing, unexpected, wrong_shape) -> str:
  lines = [f"Wan VAE checkpoint ({layout} key names) does not match the config:"]
  for title, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", wrong_shape)):
    if items:
      shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
      lines.append(f"  {len(items)} {title} key(s): {shown}")
  return "\n".join(lines)


def torch_state_dict_to_flax(state_dict: Mapping[str, Any], cfg: WanVAEConfig,
                             *, dtype=None) -> dict:
  """Original or diffusers state_dict (numpy or torch tensors) -> Flax params tree.

  Strict: raises WanVAECheckpointError listing missing, unexpected and wrong-shape keys.
  dtype=None keeps each tensor's stored dtype (the original never casts its weights).
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  layout = detect_layout(sd)
  entries = [e.entry(layout) for e in param_table(cfg)]
  plan = param_mapping.Plan("wan_vae", entries,
                            {e.leaf: param_mapping.flax_shape(e.shape, e.layout) for e in entries})
  m = param_mapping.match(plan, sd, describe=lambda k, got, want: f"{k} {got} != {want}")
  if not m.ok:
    raise WanVAECheckpointError(_format_problems(layout, m.missing, m.unexpected, m.wrong_shape))
  return param_mapping.unflatten(param_mapping.read_params(sd, plan, m, dtype))


def infer_config(params) -> WanVAEConfig:
  """Reads dim, z_dim, dim_mult, num_res_blocks, temperal_downsample off a params tree.

  Latent mean/std are not parameters: the Wan2.1 constants are assumed for z_dim 16.
  """
  enc = params["encoder"]
  dim = int(np.shape(enc["conv1"]["kernel"])[-1])
  z_dim = int(np.shape(params["conv2"]["kernel"])[-1])
  n = sum(1 for k in enc if k.startswith("downsamples_"))
  dim_mult, temporal, res_per_stage = [], [], []
  count, width = 0, dim
  for i in range(n):
    block = enc[f"downsamples_{i}"]
    if "norm1" in block:
      width = int(np.shape(block["conv1"]["kernel"])[-1])
      count += 1
    else:
      dim_mult.append(width // dim)
      res_per_stage.append(count)
      temporal.append("time_conv" in block)
      count = 0
  dim_mult.append(width // dim)
  res_per_stage.append(count)
  if len(set(res_per_stage)) != 1:
    raise ValueError(f"cannot infer num_res_blocks: stages have {res_per_stage} blocks")
  wan21 = z_dim == len(wan.WAN_LATENTS_MEAN)
  return WanVAEConfig(dim=dim, z_dim=z_dim, dim_mult=tuple(dim_mult),
                      num_res_blocks=res_per_stage[0], temperal_downsample=tuple(temporal),
                      latents_mean=wan.WAN_LATENTS_MEAN if wan21 else (0.0,) * z_dim,
                      latents_std=wan.WAN_LATENTS_STD if wan21 else (1.0,) * z_dim)


def flax_to_torch_state_dict(params, cfg: Optional[WanVAEConfig] = None, *,
                             layout: str = "original") -> dict[str, np.ndarray]:
  """Flax params -> state_dict of numpy arrays with the original (or diffusers) key names.

  The config is inferred from the params when not given. Strict like the other direction.
  """
  if layout not in ("original", "diffusers"):
    raise ValueError(f"layout must be 'original' or 'diffusers', got {layout!r}")
  cfg = infer_config(params) if cfg is None else cfg
  flat = {path: np.asarray(v) for path, v in param_mapping.flatten(params).items()}
  table = {"/".join(e.flax_path): e for e in param_table(cfg)}
  want = {path: param_mapping.flax_shape(e.torch_shape, e.kind) for path, e in table.items()}
  missing = [path for path in table if path not in flat]
  unexpected = sorted(path for path in flat if path not in table)
  wrong_shape = [f"{path} {flat[path].shape} != {want[path]}" for path in table
                 if path in flat and flat[path].shape != want[path]]
  if missing or unexpected or wrong_shape:
    raise WanVAECheckpointError(_format_problems("flax", missing, unexpected, wrong_shape))
  out = {}
  for path, e in table.items():
    entry = e.entry(layout)
    out[entry.key] = param_mapping.to_torch(flat[path], entry)
  return out


# ----------------------------------------------------------------------------- files


def _to_numpy(value) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
    import torch  # pylint: disable=g-import-not-at-top
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
  return np.asarray(value)
