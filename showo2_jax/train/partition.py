"""Which parameters train, and in which optimizer group.

The original freezes and groups parameters by substring of their state_dict name
(`_freeze_params`, the stage-2 param groups). We do the same on '/'-joined Flax
paths ('showo/model/layers_0/...'), whose top-level names are the original's.

Frozen parameters are split off before differentiation: they get no gradient,
no optimizer state, and pass through the step untouched.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from flax import traverse_util

FROZEN = "frozen"


def path_name(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def label_params(params, frozen: Sequence[str], groups: Mapping[str, Sequence[str]] | None):
  """Flat {path: label}: FROZEN, or the name of the one group whose pattern matches.

  With `groups` empty every non-frozen param is labelled "all". A trainable param
  that matches no group is frozen (the original never updates it, spec 10.6); one
  that matches two groups is an error, since the original's first-match order is
  not something a config should silently rely on. A frozen pattern that matches
  no parameter is an error too (a typo would otherwise train what it meant to freeze).
  """
  flat = traverse_util.flatten_dict(params)
  names = [path_name(p) for p in flat]
  dead = [f for f in frozen if not any(f in n for n in names)]
  if dead:
    raise ValueError(f"train.frozen: pattern(s) {dead} match no parameter (top-level groups: "
                     f"{sorted({n.split('/')[0] for n in names})})")
  labels = {}
  for path in flat:
    name = path_name(path)
    if any(f in name for f in frozen):
      labels[path] = FROZEN
      continue
    if not groups:
      labels[path] = "all"
      continue
    hits = [g for g, patterns in groups.items() if any(p in name for p in patterns)]
    if len(hits) > 1:
      raise ValueError(f"parameter '{name}' matches optimizer groups {hits}; make them disjoint")
    labels[path] = hits[0] if hits else FROZEN
  return labels


def split(params, labels):
  """(trainable, frozen) nested dicts; every leaf lands in exactly one."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if labels[k] != FROZEN}
  frozen = {k: v for k, v in flat.items() if labels[k] == FROZEN}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen):
  flat = dict(traverse_util.flatten_dict(frozen))
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def trainable_labels(labels):
  """The nested label tree of the trainable subtree (for optax.multi_transform)."""
  return traverse_util.unflatten_dict({k: v for k, v in labels.items() if v != FROZEN})


def summary(params, labels) -> dict[str, int]:
  """Parameter count per label (for the start-of-run log)."""
  counts: dict[str, int] = {}
  for k, v in traverse_util.flatten_dict(params).items():
    counts[labels[k]] = counts.get(labels[k], 0) + int(getattr(v, "size", 0))
  return counts
