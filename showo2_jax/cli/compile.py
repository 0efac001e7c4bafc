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
"""
from __future__ import annotations

import argparse
import logging

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


def run(args) -> int:
  quiet_libraries()
  config = load_config(args)
  if "train" not in config:
    raise CliError(f"config '{args.config}' has no train block")
  devices = _devices(args.topology, args.slices)
  from showo2_jax.train import aot  # pylint: disable=import-outside-toplevel
  logging.getLogger(__name__).info("compiling the train step of %s for %s", args.config, args.topology)
  try:
    report = aot.compile_train_step(config, devices)
  except ValueError as e:          # a mesh or batch that does not fit the topology
    raise CliError(str(e)) from None
  for line in report.lines():
    print(line)
  return 0
