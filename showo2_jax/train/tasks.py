"""What a run trains: the model, its objective and which params train.

The loop (trainer.py) is the same for every task; a task supplies
- `init_params(rng)`: boxed (logically named) params, without the 'params' key;
- `objective(params, batch, rng) -> (loss, metrics)`;
- `labels(params)`: frozen / optimizer group per param (partition.py);
- `make_iterator(mesh)`: this process's batches.
`config.train.task` picks one: "showo2" (stages 1-2, mixed modality),
"distill_semantic" (the semantic-layer distillation that precedes stage 1) or
"wan_vae" (training a Wan-architecture VAE, train/vae_task.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from showo2_jax.models.config import Showo2Config
from showo2_jax.models.showo2 import Showo2, init_params as showo2_init_params
from showo2_jax.train import data as data_lib
from showo2_jax.train import optimizer as optimizer_lib
from showo2_jax.train import partition
from showo2_jax.train.objective import Showo2Objective


@dataclasses.dataclass
class Task:
  name: str
  model_config: Showo2Config
  init_params: Callable
  objective: Callable
  labels: Callable
  make_iterator: Callable
  tokens_per_row: int


def _labels_fn(config):
  frozen = tuple(config.train.get("frozen", ()) or ())
  groups = optimizer_lib.group_patterns(config.optim)
  return lambda params: partition.label_params(params, frozen, groups)


def showo2_task(config) -> Task:
  mc = Showo2Config.from_config_dict(config.model)
  model = Showo2(mc)

  def init(rng):
    # The smallest inputs create every param (the position table has its own size).
    return showo2_init_params(model, rng)["params"]

  return Task(name="showo2", model_config=mc, init_params=init,
              objective=Showo2Objective(model, config), labels=_labels_fn(config),
              make_iterator=lambda mesh: data_lib.make_iterator(config, mesh),
              tokens_per_row=int(config.max_seq_len))


def build(config) -> Task:
  name = config.train.get("task", "showo2")
  if name == "showo2":
    return showo2_task(config)
  if name == "distill_semantic":
    from showo2_jax.train import distill  # pylint: disable=import-outside-toplevel
    return distill.distill_task(config, _labels_fn(config))
  if name == "wan_vae":
    from showo2_jax.train import vae_task  # pylint: disable=import-outside-toplevel
    return vae_task.vae_task(config, _labels_fn(config))
  raise ValueError(f"unknown train.task '{name}'; choose showo2, distill_semantic or wan_vae")
