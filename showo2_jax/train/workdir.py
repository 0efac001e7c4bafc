"""Checks that a workdir can hold this run before anything is built or written.

A workdir holds one run: `config.json` (the config it was started with) and
`checkpoints/`. Resuming it with another model, optimizer or frozen set cannot
restore its checkpoints (Orbax would report the whole tree difference), so that
is refused up front with the fields that differ. Run-length and logging fields
(`train.num_steps`, `log_every`, `data`, ...) and how the step computes
(HOW_COMPUTED: attention implementation, remat policy) may change between
resumptions.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath

# Config blocks whose values decide the structure of the saved TrainState.
STATE_SHAPING = ("model", "optim", "train.frozen")
# Fields inside those blocks that only choose how the step computes (the same params
# and optimizer state): a run may resume with another attention kernel or remat
# policy (e.g. started on TPU with `splash`, continued on GPU with `flash`).
HOW_COMPUTED = ("model.attention_impl", "model.attention_chunk_size", "model.remat_policy")
MAX_LISTED = 5


class WorkdirError(ValueError):
  """The workdir cannot hold this run (one-line message)."""


def _flatten(d: Any, prefix: str = "") -> dict:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def _pick(flat: dict, keys) -> dict:
  return {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in keys)}


def config_differences(saved: dict, new: dict, keys=STATE_SHAPING) -> list[str]:
  """'field: saved -> new' for every state-shaping field that differs (HOW_COMPUTED
  fields aside)."""
  a, b = _pick(_flatten(saved), keys), _pick(_flatten(new), keys)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in HOW_COMPUTED]


def check(config, workdir) -> None:
  """Raises WorkdirError if `workdir` is a file, or holds checkpoints of a run whose
  config differs from `config` in a state-shaping field (see STATE_SHAPING)."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir '{workdir}' is a file, not a folder")
  saved_file = path / "config.json"
  checkpoints = path / "checkpoints"
  if not (saved_file.exists() and checkpoints.is_dir() and any(checkpoints.iterdir())):
    return
  try:
    saved = json.loads(saved_file.read_text())
  except (ValueError, UnicodeDecodeError):
    return  # unreadable: let the checkpoint restore decide
  new = json.loads(config.to_json_best_effort())
  diffs = config_differences(saved, new)
  if diffs:
    more = f" (and {len(diffs) - MAX_LISTED} more)" if len(diffs) > MAX_LISTED else ""
    raise WorkdirError(
        f"workdir '{workdir}' holds a run of another config ({'; '.join(diffs[:MAX_LISTED])}"
        f"{more}): pass a new --workdir, or the config that run was started with")
