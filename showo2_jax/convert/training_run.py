"""Exporting the params of a training run as a standalone Orbax checkpoint.

A run's workdir holds `config.json` (the whole ml_collections config) and
`checkpoints/<step>/state` (params, optimizer state, step, rng). `export_run`
keeps only the params, with the model config, in the format `convert to-torch`
and the inference commands read.
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


def run_model_config(workdir: str) -> Showo2Config:
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{workdir}: no config.json (not a showo2-jax training workdir)")
  cfg = json.loads(paths.read_text(path))
  if "model" not in cfg:
    raise ValueError(f"{path}: has no `model` section")
  return Showo2Config.from_config_dict(cfg["model"])


def export_run(workdir: str, out: str, step: Optional[int] = None, *, overwrite: bool = False) -> dict:
  """Writes the params of `workdir`'s checkpoint `step` (default: latest) to `out`."""
  from showo2_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  config = run_model_config(workdir)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                          nn.meta.unbox(abstract_params(config)))
  source = paths.join(workdir, "checkpoints", str(step)) if step is not None else workdir
  params = checkpointing.restore_params(source, abstract)
  orbax_io.save_params(out, params, config, kind="showo2", overwrite=overwrite)
  count = sum(int(x.size) for x in jax.tree.leaves(params))
  log.info("exported %d params from %s to %s", count, source, out)
  return {"out": out, "source": source, "params": count}
