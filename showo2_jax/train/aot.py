"""Ahead-of-time compilation of the train step for a topology we do not have.

`compile_train_step(config, devices)` lowers and compiles the exact jitted step
a run would use (same state and batch shardings, same donation) against
abstract inputs only: nothing is allocated, nothing runs. XLA's memory analysis
of the result is the per-device footprint: arguments (params, optimizer state,
batch, the VAE encoder's params when the step encodes pixels), outputs,
temporaries (activations, gradients) and the aliased (donated) part, so a run
can be sized before a pod is rented.

`devices` are either N fake CPU devices (`jax_num_cpu_devices`) or the devices
of a TPU topology description (`jax.experimental.topologies`, needs libtpu).
"""
from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from showo2_jax import sharding as sharding_lib
from showo2_jax.train import data as data_lib, optimizer as optimizer_lib, tasks
from showo2_jax.train import state as state_lib, step as step_lib, vae_encoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CompileReport:
  devices: int
  mesh: dict
  platform: str
  params: int
  trainable: int
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  code_bytes: int
  flops: float
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """What must fit in one device's memory: live args + outputs + temporaries,
    with donated (aliased) buffers counted once."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  def lines(self) -> list[str]:
    return [
        f"devices: {self.devices} ({self.platform}), mesh {self.mesh}",
        f"params: {_count(self.params)} ({_count(self.trainable)} trainable)",
        f"per device: arguments {_bytes(self.argument_bytes)}, outputs {_bytes(self.output_bytes)}, "
        f"temporaries {_bytes(self.temp_bytes)}, donated/aliased {_bytes(self.alias_bytes)}",
        f"per device peak (args + outputs + temps - aliased): {_bytes(self.peak_bytes)}",
        f"XLA cost analysis: {self.flops / 1e9:.3f} GFLOP per step per device; "
        f"compiled in {self.compile_seconds:.0f} s",
    ]


def _bytes(n: float) -> str:
  for unit, size in (("GiB", 2.0 ** 30), ("MiB", 2.0 ** 20), ("KiB", 2.0 ** 10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def _count(n: float) -> str:
  return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def tpu_devices(topology: str):
  """Devices of a TPU topology such as 'v5p-256' or 'v5e:4x4' (libtpu required)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # noqa: BLE001 - surfaces libtpu's own message
    raise RuntimeError(f"cannot describe TPU topology '{topology}' ({e}); it needs libtpu "
                       f"(pip install 'jax[tpu]'). Use --topology cpu:N for fake CPU devices.") from e
  return list(topo.devices)


def lower_train_step(config, devices):
  """(lowered step, StateLayout): the run's exact step traced against abstract
  inputs on a mesh of `devices`; nothing is compiled or allocated."""
  task = tasks.build(config)
  num_steps = int(config.train.num_steps)
  mesh = sharding_lib.create_mesh(config.mesh, devices)
  data_lib.check_global_batch(int(config.train.global_batch_size), mesh,
                              int(config.train.grad_accum_steps))
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    lay = state_lib.layout(
        task.init_params, lambda labels: optimizer_lib.make_optimizer(config.optim, num_steps, labels),
        task.labels, mesh)
    shapes = data_lib.batch_shapes(config)
    shard = step_lib.batch_shardings(mesh, shapes)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard[k]) for k, v in shapes.items()}
    rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=state_lib.replicated(mesh))
    encoder, args = None, ()
    if "pixel_values" in shapes:    # the VAE encode is part of the step: size it too
      encoder = vae_encoder.VaeEncoder(vae_encoder.vae_config(config))
      args = (vae_encoder.abstract_params(encoder.cfg, mesh),)
    fn = step_lib.jit_train_step(
        step_lib.make_train_step(task.objective, lay, grad_accum_steps=int(config.train.grad_accum_steps),
                                 schedules=optimizer_lib.schedules(config.optim, num_steps),
                                 encoder=encoder),
        lay, shapes, with_vae=encoder is not None)
    return fn.lower(lay.abstract, batch, rng, *args), lay


def compile_train_step(config, devices) -> CompileReport:
  lowered, lay = lower_train_step(config, devices)
  mesh = lay.mesh
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counts = {}
  for path, label in lay.labels.items():
    leaf = lay.abstract.params
    for p in path:
      leaf = leaf[p]
    counts[label == "frozen"] = counts.get(label == "frozen", 0) + int(np.prod(leaf.shape))
  return CompileReport(
      devices=len(devices), mesh=dict(mesh.shape), platform=devices[0].platform,
      params=sum(counts.values()), trainable=counts.get(False, 0),
      argument_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
      output_bytes=int(getattr(mem, "output_size_in_bytes", 0)),
      temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
      alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
      code_bytes=int(getattr(mem, "generated_code_size_in_bytes", 0)),
      flops=float((cost or {}).get("flops", 0.0)), compile_seconds=seconds)
