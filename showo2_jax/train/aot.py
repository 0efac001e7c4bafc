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
import os
import re
import time

import jax
import numpy as np

from showo2_jax import sharding as sharding_lib
from showo2_jax.train import data as data_lib, flops as flops_lib, optimizer as optimizer_lib, tasks
from showo2_jax.train import state as state_lib, step as step_lib, vae_encoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CompileReport:
  devices: int
  mesh: dict
  platform: str
  device_kind: str
  params: int
  trainable: int
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  code_bytes: int
  xla_peak_bytes: int            # XLA's own peak (TPU: what it checks against HBM; used on TPU/GPU only)
  flops: float                   # XLA cost analysis, per device (a scanned body counted once)
  model_flops: float             # flops.train_flops_per_step / devices (remat not counted)
  program_flops: float           # flops.jaxpr_matmul_flops / devices (scans x length, remat counted)
  tokens_per_device: float       # tokens of one step per device
  compile_seconds: float         # XLA compile (HLO passes + TPU/CPU codegen), wall
  collectives: dict = dataclasses.field(default_factory=dict)  # op -> count in the compiled HLO
  attention_impl: str = ""
  pallas_kernels: int = 0        # Mosaic (Pallas TPU) kernel calls in the compiled step
  trace_seconds: float = 0.0     # tracing the step to a jaxpr (state layout included), wall
  lower_seconds: float = 0.0     # jaxpr -> StableHLO, wall
  compile_cpu_seconds: float = 0.0  # CPU time (user + system, all threads) of the compile
  while_loops: int = 0           # while loops in the compiled HLO (scanned layer stacks stay loops)
  xla_layer_flops: float = 0.0   # flops.hlo_matmul_flops of the compiled HLO: loop bodies x trip count
  unknown_trip_loops: int = 0    # while loops whose trip count could not be read (counted once)

  @property
  def sum_bytes(self) -> int:
    """Arguments + outputs + temporaries, donated (aliased) buffers counted once:
    an upper bound of what one device holds at once."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @property
  def xla_peak_is_meaningful(self) -> bool:
    """XLA's `peak_memory_in_bytes` is what the TPU/GPU compiler plans device memory
    by; the CPU backend reports a number too (jax 0.10: below its own temporaries),
    which is not a device's peak."""
    return bool(self.xla_peak_bytes) and self.platform.lower() in ("tpu", "gpu", "cuda", "rocm")

  @property
  def peak_bytes(self) -> int:
    """What must fit in one device's memory: XLA's peak on TPU/GPU, else the upper
    bound `sum_bytes`."""
    return self.xla_peak_bytes if self.xla_peak_is_meaningful else self.sum_bytes

  def lines(self) -> list[str]:
    hbm = HBM_BYTES.get(self.device_kind)
    fit = ""
    if hbm:
      fit = f" of {_bytes(hbm)} HBM ({100 * self.peak_bytes / hbm:.0f}%)"
      if self.peak_bytes > hbm:
        fit += ": DOES NOT FIT"
      elif self.peak_bytes > FIT_FRACTION * hbm:
        fit += f": fits, but above {FIT_FRACTION:.0%} of HBM (little room for the runtime's own buffers)"
      else:
        fit += f": fits, within {FIT_FRACTION:.0%} of HBM"
    peak_src = ("XLA peak_memory_in_bytes" if self.xla_peak_is_meaningful else
                f"upper bound: args + outputs + temps - aliased; {self.platform} reports no real peak")
    return [
        f"devices: {self.devices} ({self.device_kind or self.platform}), mesh {self.mesh}",
        f"attention: {self.attention_impl or '?'} ({self.pallas_kernels} Pallas TPU kernel calls "
        "in the compiled step)",
        f"params: {_count(self.params)} ({_count(self.trainable)} trainable)",
        f"per device: arguments {_bytes(self.argument_bytes)}, outputs {_bytes(self.output_bytes)}, "
        f"temporaries {_bytes(self.temp_bytes)}, donated/aliased {_bytes(self.alias_bytes)}",
        f"per device peak ({peak_src}): {_bytes(self.peak_bytes)}{fit}",
        f"FLOPs per step per device: model formula {_flops(self.model_flops)} "
        f"({self.tokens_per_device:g} tokens; train/flops.py, no remat); the step's matmuls "
        f"{_flops(self.program_flops)} ({self.program_flops / max(self.model_flops, 1):.2f}x; "
        "jaxpr, scanned layers x their count, remat recompute included, Pallas kernels not); "
        f"compiled HLO {_flops(self.xla_layer_flops)} ({self.xla_layer_flops / max(self.model_flops, 1):.2f}x; "
        "XLA's dots and convolutions, each loop body x its trip count"
        + (f", {self.unknown_trip_loops} loop(s) of unknown trip count counted once" if self.unknown_trip_loops else "")
        + f"); XLA cost analysis {_flops(self.flops)} (counts a scanned layer stack once); "
        f"traced in {self.trace_seconds:.0f} s, lowered in {self.lower_seconds:.0f} s, compiled in "
        f"{self.compile_seconds:.0f} s ({self.compile_cpu_seconds:.0f} CPU s; {self.while_loops} while "
        "loops in the compiled step)",
        "collectives in the compiled step: " + (", ".join(
            f"{n} {op}" for op, n in sorted(self.collectives.items())) or "none"),
    ]


# Per-device HBM by `device_kind` (chip for v5p/v5e/v6e; one TensorCore's share on v4).
# The share of HBM a step's peak may take and still be called a fit: the rest is
# left to the runtime (collectives' buffers, the input pipeline's prefetch); the
# pod configs' remat choices are made against it (docs/training.md).
FIT_FRACTION = 0.85
HBM_BYTES = {
    "TPU v4": 16 * 2 ** 30,       # 32 GiB per chip, two cores
    "TPU v5": 95 * 2 ** 30,       # v5p: 95 GiB per chip
    "TPU v5 lite": 16 * 2 ** 30,  # v5e
    "TPU v6 lite": 32 * 2 ** 30,  # v6e (Trillium)
}


def _bytes(n: float) -> str:
  for unit, size in (("GiB", 2.0 ** 30), ("MiB", 2.0 ** 20), ("KiB", 2.0 ** 10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def _flops(n: float) -> str:
  for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:.3f} {unit}"
  return f"{n:.0f} FLOP"


def _count(n: float) -> str:
  return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


# Slice names count TensorCores on v4/v5p (two per chip, one megacore device)
# and chips on v5e/v6e; libtpu wants the physical chip grid.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v5litepod": 1, "v6e": 1}
_GENERATION = {"v5litepod": "v5e"}


def tpu_topology_name(name: str) -> str:
  """'v5p-128' (a slice name, as `gcloud` and Cloud TPU docs spell it) or a raw
  'v5p:4x4x4' -> the libtpu topology name ('v5p:4x4x4').

  Slice sizes count TensorCores for v4/v5p (v5p-128 = 64 chips = 4x4x4) and
  chips for v5e/v6e (v5e-256 = 16x16). The chip grid is Google's standard one:
  3-D tori for v4/v5p (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...), 2-D for
  v5e/v6e (1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16). Raises ValueError for
  other names or sizes.
  """
  if ":" in name:
    gen, _, grid = name.partition(":")
    if not grid or not all(p.isdigit() for p in grid.split("x")):
      raise ValueError(f"TPU topology '{name}': expected GENERATION:AxBxC such as v5p:4x4x4")
    return name
  gen, _, size = name.partition("-")
  if gen not in _CORES_PER_CHIP or not size.isdigit():
    raise ValueError(f"TPU topology '{name}': expected a slice name such as v5p-128, v4-64, "
                     f"v5e-256 or v6e-256 ({', '.join(_CORES_PER_CHIP)}), or a raw v5p:4x4x4")
  per_chip = _CORES_PER_CHIP[gen]
  chips, rest = divmod(int(size), per_chip)
  if rest or chips < 1 or chips & (chips - 1):
    raise ValueError(f"TPU topology '{name}': {size} is not a standard {gen} slice size "
                     f"(a power of two{' of TensorCores, 2 per chip' if per_chip == 2 else ' of chips'}); "
                     "pass the chip grid, e.g. v5p:4x4x6")
  gen = _GENERATION.get(gen, gen)
  if per_chip == 2:                     # 3-D torus: grow the smallest axis, from 2x2x1
    dims = [2, 2, 1] if chips >= 4 else [chips, 1, 1]
    while dims[0] * dims[1] * dims[2] < chips:
      i = max(j for j in range(3) if dims[j] == min(dims))
      dims[i] *= 2
      dims.sort()
    if chips < 4:
      dims = sorted(dims, reverse=True)
  else:                                 # 2-D torus: AxB with A <= B <= 2A
    a = 1 << ((chips.bit_length() - 1) // 2)
    dims = [a, chips // a]
  return f"{gen}:{'x'.join(map(str, dims))}"


def tpu_devices(topology: str, num_slices: int = 1):
  """Devices of a TPU topology such as 'v5p-256' or 'v5e:4x4' (libtpu required),
  `num_slices` copies of it joined over DCN (multislice). Nothing is allocated:
  these devices can be compiled for, not run on."""
  name = tpu_topology_name(topology)
  # A CPU host may have another process holding libtpu's lock file; describing a
  # topology uses no TPU, so several processes may do it at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu", num_slices=num_slices)
  except Exception as e:  # noqa: BLE001 - surfaces libtpu's own message
    raise RuntimeError(f"cannot describe TPU topology '{name}' ({str(e).splitlines()[0]}); it needs "
                       f"libtpu (pip install -e '.[tpu]'). Use --topology cpu:N for fake CPU devices.") from e
  return list(topo.devices)


COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def count_collectives(hlo_text: str) -> dict:
  """{op: count} of the collective instructions in compiled HLO text (async pairs
  counted once, at their -start)."""
  pattern = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  counts = {}
  for m in pattern.finditer(hlo_text):
    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
  return counts


def lower_train_step(config, devices):
  """(lowered step, StateLayout): the run's exact step traced against abstract
  inputs on a mesh of `devices`; nothing is compiled or allocated."""
  traced, lay = trace_train_step(config, devices)
  with jax.set_mesh(lay.mesh), sharding_lib.axis_rules():
    return traced.lower(), lay


def trace_train_step(config, devices):
  """(traced step, StateLayout), as `lower_train_step` but before lowering (its
  jaxpr gives the matmul FLOPs, `flops.jaxpr_matmul_flops`)."""
  task = tasks.build(config)
  num_steps = int(config.train.num_steps)
  abstract = state_lib.abstract_state(
      task.init_params, lambda labels: optimizer_lib.make_optimizer(config.optim, num_steps, labels),
      task.labels)
  mesh = sharding_lib.create_mesh(config.mesh, devices, fit_to=abstract.boxed)
  data_lib.check_global_batch(int(config.train.global_batch_size), mesh,
                              int(config.train.grad_accum_steps))
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    lay = state_lib.layout_of(abstract, mesh)
    shapes = data_lib.batch_shapes(config)
    shard = step_lib.batch_shardings(mesh, shapes)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard[k]) for k, v in shapes.items()}
    rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=sharding_lib.replicated(mesh))
    encoder, args = None, ()
    if "pixel_values" in shapes:    # the VAE encode is part of the step: size it too
      encoder = vae_encoder.VaeEncoder(vae_encoder.vae_config(config))
      args = (vae_encoder.abstract_params(encoder.cfg, mesh),)
    fn = step_lib.jit_train_step(
        step_lib.make_train_step(task.objective, lay, grad_accum_steps=int(config.train.grad_accum_steps),
                                 schedules=optimizer_lib.schedules(config.optim, num_steps),
                                 encoder=encoder),
        lay, shapes, with_vae=encoder is not None)
    return fn.trace(lay.abstract, batch, rng, *args), lay


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def count_while_loops(hlo_text: str) -> int:
  """While instructions in HLO text: a scanned layer stack stays one loop (its
  body compiled once); an unrolled stack would show none."""
  return len(re.findall(r"\swhile\(", hlo_text))


def compile_train_step(config, devices) -> CompileReport:
  t0 = time.perf_counter()
  traced, lay = trace_train_step(config, devices)
  mesh = lay.mesh
  t1 = time.perf_counter()
  program_flops = flops_lib.jaxpr_matmul_flops(traced.jaxpr)
  t2 = time.perf_counter()
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    lowered = traced.lower()
  t3, cpu0 = time.perf_counter(), _cpu_seconds()
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    compiled = lowered.compile()
  seconds, cpu_seconds = time.perf_counter() - t3, _cpu_seconds() - cpu0
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo_flops = flops_lib.hlo_matmul_flops(text)
  counts = {}
  for path, label in lay.labels.items():
    leaf = lay.abstract.params
    for p in path:
      leaf = leaf[p]
    counts[label == "frozen"] = counts.get(label == "frozen", 0) + int(np.prod(leaf.shape))
  gb, seq_len = int(config.train.global_batch_size), int(config.max_seq_len)
  model_flops = flops_lib.train_flops_per_step(tasks.build(config).model_config, seq_len,
                                               data_lib.slots_per_row(config), gb)
  return CompileReport(
      devices=len(devices), mesh=dict(mesh.shape), platform=devices[0].platform,
      device_kind=str(getattr(devices[0], "device_kind", "")),
      params=sum(counts.values()), trainable=counts.get(False, 0),
      argument_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
      output_bytes=int(getattr(mem, "output_size_in_bytes", 0)),
      temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
      alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
      code_bytes=int(getattr(mem, "generated_code_size_in_bytes", 0)),
      xla_peak_bytes=int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
      flops=float((cost or {}).get("flops", 0.0)),
      model_flops=model_flops / len(devices), program_flops=program_flops / len(devices),
      tokens_per_device=gb * seq_len / len(devices),
      compile_seconds=seconds, collectives=count_collectives(text),
      attention_impl=str(config.model.get("attention_impl", "dense")),
      pallas_kernels=text.count('custom_call_target="tpu_custom_call"'),
      trace_seconds=t1 - t0, lower_seconds=t3 - t2, compile_cpu_seconds=cpu_seconds,
      while_loops=count_while_loops(text), xla_layer_flops=hlo_flops["flops"],
      unknown_trip_loops=hlo_flops["unknown_trips"])
