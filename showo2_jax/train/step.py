"""One optimizer step as a pure function, and its jitted, sharded form.

`train_step(state, batch, rng[, vae_params]) -> (state, metrics)`:
1. split params into trainable and frozen (frozen leaves are constants of the
   differentiated function: no gradient is computed or stored for them);
2. per microbatch, turn its images into clean latents (vae_encoder.py): the
   frozen VAE's sampled encode of `pixel_values`, or a posterior sample of
   precomputed `latents` + `latents_logvar`, or the stored latents as they are;
   this sits outside the differentiated function, so the VAE costs a forward
   pass only;
3. loss and gradients, over `grad_accum_steps` microbatches scanned in one
   program (gradients summed in fp32, then averaged: the original's
   accumulation divides each microbatch loss by the count);
4. clip (global norm) + AdamW per group on the trainable subtree; merge back.

`jit_train_step` fixes the state's shardings in and out, shards every batch
field on its first axis over (data, fsdp), replicates rng, metrics and the VAE
params, and donates the incoming state so params and moments are updated in
place (never the VAE params, which every step reuses).
"""
from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from showo2_jax.sharding import replicated
from showo2_jax.train import data as data_lib
from showo2_jax.train import partition, vae_encoder
from showo2_jax.train.state import StateLayout, TrainState

Objective = Callable  # (params, batch, rng) -> (loss, metrics dict of scalars)


def microbatches(batch: Mapping[str, jax.Array], num: int) -> dict:
  """(A*mb, ...) -> (A, mb, ...) with microbatch a = rows a, A+a, 2A+a, ...

  Strided rather than contiguous, so each microbatch is spread over every device
  that holds part of the batch and the split needs no communication.
  """
  def split(x):
    y = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    names = (None, "activation_batch") + (None,) * (x.ndim - 1)
    return nn.with_logical_constraint(y, names)
  return {k: split(v) for k, v in batch.items()}


def make_train_step(objective: Objective, lay: StateLayout, *, grad_accum_steps: int = 1,
                    schedules: Mapping[str, Callable] | None = None,
                    encoder: vae_encoder.VaeEncoder | None = None) -> Callable:
  """`encoder`: the VAE that turns `pixel_values` into latents (None: batches
  carry latents). The step then takes the VAE params as a fourth argument.
  An objective with `reads_pixels = True` gets the batch's pixels as they are."""
  labels, tx = lay.labels, lay.tx
  grad_shardings, _ = partition.split(lay.param_shardings, labels)

  def sharded_like_params(grads):
    """Gradients laid out as their params (FSDP: sharded over fsdp). Without it XLA
    may all-reduce each full gradient and slice it afterwards; with it the
    backward reduce-scatters, half the bytes, and an accumulator holds one shard."""
    return jax.lax.with_sharding_constraint(grads, grad_shardings)

  def train_step(state: TrainState, batch, rng, vae_params=None):
    trainable, frozen = partition.split(state.params, labels)
    r_vae = vae_encoder.vae_rng(rng)

    def visuals(mb, r):
      if getattr(objective, "reads_pixels", False):   # e.g. training the VAE itself
        return mb
      return vae_encoder.prepare_visuals(mb, r, encoder, vae_params)

    def loss_fn(tr, mb, r):
      return objective(partition.merge(tr, frozen), mb, r)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
      (_, metrics), grads = grad_fn(trainable, visuals(batch, r_vae), rng)
      grads = sharded_like_params(grads)
    else:
      def body(acc, xs):
        mb, r, rv = xs
        (_, m), g = grad_fn(trainable, visuals(mb, rv), r)
        g = sharded_like_params(jax.tree.map(lambda x: x.astype(jnp.float32), g))
        return jax.tree.map(jnp.add, acc, (g, m)), None

      zeros_g = sharded_like_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable))
      first = jax.tree.map(lambda x: x[0], microbatches(batch, grad_accum_steps))
      _, m_shape = jax.eval_shape(lambda mb: loss_fn(trainable, visuals(mb, r_vae), rng), first)
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), m_shape)
      xs = (microbatches(batch, grad_accum_steps), jax.random.split(rng, grad_accum_steps),
            jax.random.split(r_vae, grad_accum_steps))
      (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), xs)
      grads = jax.tree.map(lambda g, p: (g / grad_accum_steps).astype(p.dtype), grads, trainable)
      metrics = jax.tree.map(lambda m: m / grad_accum_steps, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(trainable)
    for name, sched in (schedules or {}).items():
      metrics[f"lr/{name}"] = jnp.asarray(sched(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=partition.merge(trainable, frozen),
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def batch_shardings(mesh: Mesh, batch_spec: Mapping) -> dict:
  """One NamedSharding per field, batch axis over (data, fsdp); `batch_spec` maps
  field -> anything with `.ndim` (arrays or ShapeDtypeStructs)."""
  return {k: data_lib.batch_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}


def jit_train_step(train_step: Callable, lay: StateLayout, batch_spec: Mapping, *,
                   with_vae: bool = False):
  """The jitted step: `(state, batch, rng)`, or `(state, batch, rng, vae_params)`
  with `with_vae` (params replicated, not donated)."""
  rep = replicated(lay.mesh)
  in_shardings = (lay.shardings, batch_shardings(lay.mesh, batch_spec), rep)
  fn = train_step
  if with_vae:
    in_shardings += (rep,)
  else:
    fn = lambda state, batch, rng: train_step(state, batch, rng)  # noqa: E731 - fixed arity
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=(lay.shardings, rep),
                 donate_argnums=(0,))


def step_rng(state_rng: jax.Array, step) -> jax.Array:
  """The key of step `step`: a function of (base key, step) only, so a resumed run
  draws the same t and noise as an uninterrupted one."""
  return jax.random.fold_in(state_rng, step)
