"""AdamW with the original's schedules, parameter groups and gradient clipping.

- Schedules (the original's `get_scheduler`, stepped once per optimizer step):
  `constant_with_warmup` (linear 0 -> lr over warm-up, then constant; stage 1 and
  mixed modality) and `cosine` (linear warm-up, then half a cosine to 0 at
  `num_steps`; stage 2, warm-up = int(0.03 * steps)).
- Groups: one AdamW per group with its own lr (stage 2: ve / proj / showo), built
  with `optax.multi_transform` over the *trainable* subtree only; frozen params
  never reach the optimizer (see `partition`).
- Clipping: global norm over all trainable gradients, before the groups, as
  `accelerator.clip_grad_norm_(model.parameters(), 1.0)`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import optax

Schedule = Callable


def learning_rate_schedule(name: str, peak: float, num_steps: int, warmup_steps: int) -> Schedule:
  warmup_steps = int(warmup_steps)
  if name == "constant":
    return optax.constant_schedule(peak)
  if name == "constant_with_warmup":
    if warmup_steps <= 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
        [warmup_steps])
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(int(num_steps), warmup_steps + 1), end_value=0.0)
  raise ValueError(f"unknown lr schedule '{name}'; choose constant, constant_with_warmup or cosine")


def warmup_steps(optim_config, num_steps: int) -> int:
  ratio = float(optim_config.get("warmup_ratio", 0.0) or 0.0)
  if ratio > 0:
    return int(ratio * num_steps)
  return int(optim_config.get("warmup_steps", 0) or 0)


def group_learning_rates(optim_config) -> dict[str, float]:
  groups = optim_config.get("groups") or {}
  if not groups:
    return {"all": float(optim_config.learning_rate)}
  return {name: float(g["lr"]) for name, g in groups.items()}


def group_patterns(optim_config) -> dict[str, tuple[str, ...]]:
  groups = optim_config.get("groups") or {}
  return {name: tuple(g["patterns"]) for name, g in groups.items()}


def schedules(optim_config, num_steps: int) -> dict[str, Schedule]:
  """One schedule per group (same shape, the group's peak lr)."""
  warm = warmup_steps(optim_config, num_steps)
  return {name: learning_rate_schedule(optim_config.schedule, lr, num_steps, warm)
          for name, lr in group_learning_rates(optim_config).items()}


def make_optimizer(optim_config, num_steps: int, labels: Mapping) -> optax.GradientTransformation:
  """The full transform for the trainable subtree; `labels` is its label tree
  (`partition.trainable_labels`)."""
  per_group = {
      name: optax.adamw(sched, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                        weight_decay=optim_config.weight_decay)
      for name, sched in schedules(optim_config, num_steps).items()}
  parts = []
  if optim_config.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(float(optim_config.clip_grad_norm)))
  parts.append(optax.multi_transform(per_group, labels))
  return optax.chain(*parts)
