"""Semantic-layer distillation: teach SigLIP's layers to read VAE latents (spec 1.3).

Before stage 1 the paper adapts the understanding path: a new 2x2 patch embedder
on 16-channel VAE latents (`image_embedder_und`), SigLIP's position table and its
first 26 layers (`und_trans`) are trained so that their output on an image's
latents matches SigLIP's own features of that image's pixels. The original's
`ShowoSemanticLayers` loss is mean(-log(clamp(cos, 1e-4, 0.9999))) over tokens;
the paper distills on clean and on noised latents, so that understanding
survives the noise levels of generation: we average the loss of both, with t
drawn as in training (logit-normal + resolution shift).

Params carry Show-o2's names, so the result drops into a Show-o2 tree
(`init.semantic_layers_from` of a stage-1 config).

Batches: `latents` (B, C, H, W) clean, `teacher` (B, N, D_siglip) SigLIP
features of the same images. Real data: `showo2-jax precompute-latents
--teacher <HF SigLIP dir>` encodes each image once with the Wan VAE and the
SigLIP pixel tower (models/siglip_vision.py) into ArrayRecord shards
(`latents`, `latents_teacher`); the task reads them through Grain with
`data.source = "array_record"`, `data.path = <shard glob>`. Synthetic data
(`data.source = "synthetic"`) uses a fixed random map as the teacher.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import SemanticLayers
from showo2_jax.flow import transport
from showo2_jax.train import data as data_lib
from showo2_jax.train import objective as objective_lib
from showo2_jax.train import synthetic

def cosine_distill_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """mean over tokens of -log(clamp(cos(student, teacher), 1e-4, 0.9999)), fp32."""
  def unit(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  cos = jnp.sum(unit(student) * unit(teacher), axis=-1)
  return jnp.mean(-jnp.log(jnp.clip(cos, 1e-4, 0.9999)))


class DistillObjective:
  def __init__(self, model: SemanticLayers, config):
    self.model = model
    self.shift_mu = objective_lib.shift_mu(config)

  def __call__(self, params, batch, rng):
    x1 = batch["latents"].astype(jnp.float32)
    r_t, r_noise = jax.random.split(rng)
    t = transport.sample_train_t(r_t, x1.shape[0], shift_mu=self.shift_mu)
    x_t = transport.interpolate(x1, jax.random.normal(r_noise, x1.shape, jnp.float32), t)
    both = self.model.apply({"params": params}, jnp.concatenate([x1, x_t]))
    clean, noised = jnp.split(both, 2)
    loss_clean = cosine_distill_loss(clean, batch["teacher"])
    loss_noised = cosine_distill_loss(noised, batch["teacher"])
    loss = 0.5 * (loss_clean + loss_noised)
    return loss, {"loss": loss, "distill_clean": loss_clean, "distill_noised": loss_noised}


class SyntheticTeacherSource:
  """Latents of the synthetic classes and a fixed, learnable 'teacher': a random
  two-layer map of each 2x2 latent patch. Random access like SyntheticSource."""

  def __init__(self, spec: synthetic.SyntheticSpec, teacher_dim: int, patch_size: int):
    self.base = synthetic.SyntheticSource(spec)
    self.spec, self.p = spec, patch_size
    rng = np.random.default_rng([spec.seed, 7])
    din = spec.latent_shape[0] * patch_size * patch_size
    self.w1 = rng.standard_normal((din, 4 * teacher_dim)).astype(np.float32) / np.sqrt(din)
    self.w2 = rng.standard_normal((4 * teacher_dim, teacher_dim)).astype(np.float32) / np.sqrt(4 * teacher_dim)

  def rows(self, index: int, start: int, stop: int) -> dict:
    latents = self.base.rows(index, start, stop)["latents"]          # (B, C, H, W), M = 1
    b, c, hh, ww = latents.shape
    p = self.p
    patches = latents.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, (hh // p) * (ww // p), p * p * c)
    teacher = np.tanh(patches @ self.w1) @ self.w2
    return {"latents": latents, "teacher": teacher.astype(np.float32)}


def distill_task(config, labels_fn):
  from showo2_jax.train.tasks import Task  # pylint: disable=import-outside-toplevel
  mc = Showo2Config.from_config_dict(config.model)
  model = SemanticLayers(mc)
  p = mc.patch_size

  def init(rng) -> Any:
    return model.init(rng, jnp.zeros((1, mc.latent_channels, 2 * p, 2 * p), jnp.float32))["params"]

  def make_iterator(mesh):
    start, stop = data_lib.process_rows(mesh, config.train.global_batch_size)
    if config.data.get("source") == "array_record":
      return record_iterator(config, stop - start, mc)
    source = SyntheticTeacherSource(data_lib.synthetic_spec(config), mc.siglip.hidden_size, p)
    return synthetic.SyntheticIterator(source, start, stop)

  if config.data.get("source") not in ("synthetic", "array_record"):
    raise ValueError("distill_semantic reads precomputed (latents, SigLIP features) records "
                     "(data.source='array_record', data.path=<shard glob>) or synthetic data")
  return Task(name="distill_semantic", model_config=mc, init_params=init,
              objective=DistillObjective(model, config), labels=labels_fn,
              make_iterator=make_iterator,
              tokens_per_row=mc.image_latent_height * mc.image_latent_width)


def _distill_row(record: dict) -> dict:
  """A precomputed record (one image) -> {'latents': (C, H, W), 'teacher': (N, D)}."""
  if "latents_teacher" not in record:
    raise ValueError("distillation records need `latents_teacher` (precompute-latents --teacher)")
  return {"latents": np.asarray(record["latents"][0], np.float32),
          "teacher": np.asarray(record["latents_teacher"][0], np.float32)}


def record_iterator(config, rows: int, mc: Showo2Config):
  """This process's batches of precomputed records, through Grain: shard by process,
  shuffle (seed), repeat, batch. Its iterator checkpoints its position."""
  from showo2_jax import paths  # pylint: disable=import-outside-toplevel
  from showo2_jax.data import sources  # pylint: disable=import-outside-toplevel
  files = paths.glob(config.data.path)
  if not files:
    raise FileNotFoundError(f"data.path {config.data.path!r} matches no ArrayRecord shard")
  records = sources.array_record_source(files)
  records = records[jax.process_index()::jax.process_count()]
  ds = (records.shuffle(seed=int(config.data.get("seed", config.seed))).repeat().map(_distill_row)
        .batch(rows, drop_remainder=True))
  n = mc.image_latent_height * mc.image_latent_width
  first = ds[0]
  if first["teacher"].shape[1:] != (n, mc.siglip.hidden_size):
    raise ValueError(f"teacher features {first['teacher'].shape[1:]} do not match the student's "
                     f"{n} tokens x {mc.siglip.hidden_size} (SigLIP image_size/patch must give the "
                     f"latent token grid)")
  return iter(ds.to_iter_dataset())
