"""`showo2-jax compile --config CONFIG --topology cpu:N|tpu:NAME [--slices S] [--config.key=value ...]`.

Compiles the config's train step for a device topology without running it and
prints the memory each device needs. `cpu:N` uses N fake host devices (any
machine; the layout is exact, only the target is the CPU backend).
`tpu:NAME` compiles with the real TPU compiler for a TPU topology described by
libtpu (`pip install -e '.[tpu]'`; no TPU needed, a CPU host will do): NAME is
a slice name as Google spells it, counting TensorCores on v4/v5p
(`v5p-128` = 64 chips = `v5p:4x4x4`) and chips on v5e/v6e (`v5e-256` =
`v5e:16x16`), or a raw chip grid such as `v5p:4x4x4`. `--slices S` joins S such
slices over DCN (multislice; see `config.mesh.dcn_*`).

`--data FILE` takes the same data file as `train` (configs/data/): the step is
compiled for the batch its streams make (image slots per row, pixels or latents,
video clips) and the rows per host are checked against the global batch and the
topology's hosts. Its paths are not read (the data may live on the cluster).
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from showo2_jax.cli.main import CliError
from showo2_jax.cli.train import load_config, quiet_libraries
from showo2_jax.train import config_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, help="config name under configs/ or a path")
  parser.add_argument("--topology", default="cpu:8",
                      help="cpu:N (N fake CPU devices), tpu:<slice> (tpu:v5p-128, tpu:v5e-256: "
                      "TensorCores on v4/v5p, chips on v5e/v6e) or tpu:<grid> (tpu:v5p:4x4x4)")
  parser.add_argument("--slices", type=int, default=1,
                      help="TPU slices joined over DCN (multislice); tpu topologies only")
  parser.add_argument("--data", default=None, metavar="FILE",
                      help="data streams as for train (.py / .yaml / .json, see configs/data/): "
                           "compile for their batch; paths are not read")
  config_overrides.accept_overrides(parser)


def _devices(topology: str, slices: int = 1):
  kind, _, name = topology.partition(":")
  if slices < 1:
    raise CliError(f"--slices must be >= 1, got {slices}")
  if kind == "cpu":
    if slices != 1:
      raise CliError("--slices needs a tpu:<name> topology (fake CPU devices have no slices)")
    try:
      n = int(name)
    except ValueError:
      raise CliError(f"--topology cpu:N needs a device count, got '{topology}'") from None
    import jax  # pylint: disable=import-outside-toplevel
    try:
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
      raise CliError(f"cannot create {n} CPU devices: {e}") from None
    devices = jax.devices("cpu")
    if len(devices) != n:
      raise CliError(f"asked for {n} CPU devices, got {len(devices)} (XLA_FLAGS may force a count)")
    return devices
  if kind == "tpu":
    from showo2_jax.train import aot  # pylint: disable=import-outside-toplevel
    try:
      return aot.tpu_devices(name, slices)
    except (RuntimeError, ValueError) as e:
      raise CliError(str(e)) from None
  raise CliError(f"unknown topology '{topology}'; use cpu:N or tpu:<name>")


def _check_data_rows(config, devices, where: str) -> str:
  """One line on the data streams; CliError when their rows per host do not make the
  global batch on this topology's hosts (what `train` would stop on at its first batch)."""
  d = config.data
  hosts = len({getattr(x, "process_index", 0) for x in devices})
  rows = {n: int(d.streams[n].batch_size) for n in d.stream_order}
  per_host, global_batch = sum(rows.values()), int(config.train.global_batch_size)
  mix = " + ".join(f"{n} {r}" for n, r in rows.items())
  if per_host * hosts != global_batch:
    raise CliError(f"{where}: the data streams give {per_host} rows per host ({mix}) x {hosts} "
                   f"host(s) = {per_host * hosts}, but config.train.global_batch_size is "
                   f"{global_batch}; set batch_size per stream or --config.train.global_batch_size")
  return (f"data: {mix} rows per host x {hosts} host(s) = global batch {global_batch}, "
          f"{len(d.stream_order)} stream(s)")


def run(args) -> int:
  quiet_libraries()
  config = load_config(args, check_data_paths=False)
  if "train" not in config:
    raise CliError(f"config '{args.config}' has no train block")
  devices = _devices(args.topology, args.slices)
  from showo2_jax.train import aot, data as data_lib  # pylint: disable=import-outside-toplevel
  if "streams" in config.data:
    print(_check_data_rows(config, devices, args.data or args.config))
  try:
    shapes = data_lib.batch_shapes(config)
  except ValueError as e:
    raise CliError(str(e)) from None
  print("global batch: " + ", ".join(f"{k} {tuple(v.shape)} {np.dtype(v.dtype).name}"
                                     for k, v in shapes.items()))
  logging.getLogger(__name__).info("compiling the train step of %s for %s", args.config, args.topology)
  import jax  # pylint: disable=import-outside-toplevel
  try:
    report = aot.compile_train_step(config, devices)
  except ValueError as e:          # a mesh or batch that does not fit the topology
    raise CliError(str(e)) from None
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler refuses a step whose buffers exceed the chip's HBM.
    raise CliError(f"the step does not fit {args.topology}: {str(e).splitlines()[0]} Try a remat policy "
                   f"that recomputes more (now {config.model.get('remat_policy', 'none')!r}; "
                   "--config.model.remat_policy=full), fewer rows per chip "
                   "(--config.train.global_batch_size) or --config.model.attention_impl=splash; "
                   "docs/training.md lists what fits each chip") from None
  for line in report.lines():
    print(line)
  return 0
