"""Reading a training run's workdir: its model config, its steps, its params.

A run's workdir holds `config.json` (the whole ml_collections config) and
`checkpoints/<step>/state` (params, optimizer state, step, rng), written by
`train.checkpointing.Checkpointer` through `orbax_io.RunCheckpoints`.
`orbax_io.restore_run_params` reads only the params (how stage 2,
`generate --checkpoint WORKDIR` and `convert export-run` start); `export_run` writes
them, with the model config, in the format `convert to-torch` and the inference
commands read.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import flax.linen as nn
import jax

from showo2_jax import paths
from showo2_jax.convert import orbax_io
from showo2_jax.convert.showo2_torch import abstract_params
from showo2_jax.models.config import Showo2Config

log = logging.getLogger(__name__)

# A multi-phase run (shapes/recipe.py, `tiny_shapes`) records its phases here.
PHASES_FILE = "phases.json"


def run_model_config(workdir: str) -> Showo2Config:
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{workdir}: no config.json (not a showo2-jax training workdir)")
  cfg = json.loads(paths.read_text(path))
  if "model" not in cfg:
    raise ValueError(f"{path}: has no `model` section")
  return Showo2Config.from_config_dict(cfg["model"])


def final_run_dir(workdir: str) -> Optional[str]:
  """The workdir of a multi-phase run's final phase (`final_run` in its phases.json),
  or None if `workdir` is not a multi-phase run."""
  state = paths.read_json(paths.join(workdir, PHASES_FILE))
  if state is None:
    return None
  return paths.join(workdir, state["final_run"])


def export_run(workdir: str, out: str, step: Optional[int] = None, *, overwrite: bool = False) -> dict:
  """Writes the params of `workdir`'s checkpoint `step` (default: latest) to `out`."""
  config = run_model_config(workdir)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                          nn.meta.unbox(abstract_params(config)))
  source = paths.join(workdir, "checkpoints", str(step)) if step is not None else workdir
  params = orbax_io.restore_run_params(source, abstract)
  orbax_io.save_params(out, params, config, kind="showo2", overwrite=overwrite)
  count = sum(int(x.size) for x in jax.tree.leaves(params))
  log.info("exported %d params from %s to %s", count, source, out)
  return {"out": out, "source": source, "params": count}
