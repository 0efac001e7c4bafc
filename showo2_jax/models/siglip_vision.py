"""The SigLIP vision tower on pixels: the teacher of semantic-layer distillation (spec 1.3).

Show-o2's semantic layers are SigLIP's blocks reading VAE latents; the
distillation that produced `pre-distilled_semantic_layers.pt` trained them to
match SigLIP's own features of the same image. This module is that teacher, as
HF `SiglipVisionModel` computes it: a 14x14/stride-14 patch embedding (Conv2d on
RGB in [-1, 1], SigLIP's 0.5/0.5 normalisation), the learned position table, all
encoder layers (the blocks of models/siglip.py) and the post-layernorm.

    tower, params = hf.load_siglip_vision(siglip_dir)           # showo2_jax.convert.hf
    feats = tower.apply({"params": params}, pixels, output_layer=None)   # (B, N, D)

`output_layer=None` gives the post-layernormed last hidden state (HF
`last_hidden_state`); `output_layer=k` the hidden state after k layers, no
post-layernorm (HF `hidden_states[k]`), e.g. k = num_layers - 1 for the
features at the depth of Show-o2's `und_trans`. The pooling head is not built.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from showo2_jax.models import layers
from showo2_jax.models.config import SiglipConfig
from showo2_jax.models.siglip import SiglipEncoderLayer


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27               # all of them (Show-o2's und_trans keeps num_layers - 1)
  num_heads: int = 16
  layer_norm_eps: float = 1e-6
  image_size: int = 384
  patch_size: int = 14

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def block_config(self) -> SiglipConfig:
    return SiglipConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                        num_layers=self.num_layers, num_heads=self.num_heads,
                        layer_norm_eps=self.layer_norm_eps, position_grid=self.grid)

  @classmethod
  def from_hf(cls, d: dict) -> "SiglipVisionConfig":
    d = d.get("vision_config", d)
    return cls(hidden_size=int(d["hidden_size"]), intermediate_size=int(d["intermediate_size"]),
               num_layers=int(d["num_hidden_layers"]), num_heads=int(d["num_attention_heads"]),
               layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)),
               image_size=int(d["image_size"]), patch_size=int(d["patch_size"]))


class SiglipVisionTower(nn.Module):
  """pixels (B, 3, R, R) float in [-1, 1], R = image_size -> features (B, grid**2, D) fp32."""
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels, output_layer: Optional[int] = None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.transpose(pixels, (0, 2, 3, 1)).astype(self.dtype)
    x = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size, padding="VALID",
                name="patch_embedding", **kw)(x)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    table = self.param("position_embedding", nn.initializers.normal(0.02), (c.grid ** 2, d),
                       self.param_dtype)
    x = x + table.astype(self.dtype)[None, :h * w]
    block = c.block_config()
    stop = c.num_layers if output_layer is None else int(output_layer)
    if not 0 <= stop <= c.num_layers:
      raise ValueError(f"output_layer {output_layer} is outside 0..{c.num_layers}")
    # Every layer's params are created (so the tree is complete), only `stop` run.
    for i in range(c.num_layers):
      layer = SiglipEncoderLayer(block, name=f"layers_{i}", **kw)
      if i < stop:
        x, _ = layer(x)
      elif self.is_initializing():
        layer(x)
    if output_layer is None:
      x = layers.LayerNorm(c.layer_norm_eps, name="post_layernorm", **kw)(x)
    elif self.is_initializing():
      layers.LayerNorm(c.layer_norm_eps, name="post_layernorm", **kw)(x)
    return x.astype(jnp.float32)


def teacher_encoder(tower: SiglipVisionTower, params: dict, output_layer: Optional[int] = -1):
  """pixels (B, 3, R, R) in [-1, 1] -> SigLIP features (B, grid**2, D) float32 numpy.

  `tower, params` as `convert.hf.load_siglip_vision` reads them from a HF directory.
  Images are resized (bicubic, antialiased) to the tower's image_size first, so a
  432-px VAE input (27x27 latent tokens) meets SigLIP-384's 27x27 patch grid.
  `output_layer`: -1 (default) = the depth of Show-o2's `und_trans` (all layers
  but the last, no post-layernorm); None = the post-layernormed last layer.
  """
  import jax  # pylint: disable=import-outside-toplevel
  c = tower.config
  layer = c.num_layers - 1 if output_layer == -1 else output_layer

  @jax.jit
  def run(x):
    b = x.shape[0]
    if x.shape[-2:] != (c.image_size, c.image_size):
      x = jax.image.resize(x, (b, 3, c.image_size, c.image_size), "bicubic", antialias=True)
    return tower.apply({"params": params}, x, output_layer=layer)

  return lambda pixels: np.asarray(run(jnp.asarray(pixels, jnp.float32)))
