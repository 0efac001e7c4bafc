"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

One jit-friendly function for every text decoder (understanding, mixed modality).
The settings are a frozen dataclass so they can be a static argument of `jax.jit`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TokenSampling:
  """temperature 0 is greedy (argmax). top_k 0 and top_p 1.0 switch those off.

  The original's understanding scripts are greedy (they sample with top_k=1);
  its mixed-modality text is temperature 1 with no truncation.
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not 0 <= self.temperature < float("inf"):  # also refuses nan
      raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:  # also refuses nan
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0 or self.top_k == 1


GREEDY = TokenSampling()


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k / nucleus to -inf (ties at the edge are kept).

  top-p keeps the smallest set of highest-probability tokens whose mass reaches
  top_p (the token that crosses the threshold is kept), as HF/the original.
  """
  neg = jnp.asarray(-jnp.inf, logits.dtype)
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = jnp.sum(mass_before <= top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(ordered, keep - 1, axis=-1)
    logits = jnp.where(logits < threshold, neg, logits)
  return logits


def sample_next(rng: jax.Array, logits: jax.Array, sampling: TokenSampling) -> jax.Array:
  """(B, V) logits -> (B,) int32 token ids."""
  logits = logits.astype(jnp.float32)
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample_next_rows(rng: jax.Array, logits: jax.Array, temperature: jax.Array,
                     top_p: jax.Array) -> jax.Array:
  """Per-row settings: (B, V) logits, temperature / top_p (B,) -> (B,) int32 ids.

  Rows with temperature 0 are greedy; the others sample at their temperature
  with their own nucleus. The settings are traced, so requests with different
  settings share one compiled batch (the server's continuous batches).
  """
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)[:, None]
  scaled = logits / t
  ordered = jnp.sort(scaled, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = jnp.sum(mass_before <= top_p.astype(jnp.float32)[:, None], axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(ordered, jnp.maximum(keep, 1) - 1, axis=-1)
  filtered = jnp.where(scaled < threshold, -jnp.inf, scaled)
  sampled = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)
