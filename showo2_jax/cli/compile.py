"""`showo2-jax compile --config CONFIG --topology cpu:N|tpu:NAME [--config.key=value ...]`.

Compiles the config's train step for a device topology without running it and
prints the memory each device needs. `cpu:N` uses N fake host devices (any
machine; the layout is exact, only the target is the CPU backend);
`tpu:v5p-256` uses jax's TPU topology description (needs libtpu, no TPU).
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
                      help="cpu:N (N fake CPU devices) or tpu:<name> (e.g. tpu:v5p-256)")
  config_overrides.accept_overrides(parser)


def _devices(topology: str):
  kind, _, name = topology.partition(":")
  if kind == "cpu":
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
      return aot.tpu_devices(name)
    except RuntimeError as e:
      raise CliError(str(e)) from None
  raise CliError(f"unknown topology '{topology}'; use cpu:N or tpu:<name>")


def run(args) -> int:
  quiet_libraries()
  config = load_config(args)
  if "train" not in config:
    raise CliError(f"config '{args.config}' has no train block")
  devices = _devices(args.topology)
  from showo2_jax.train import aot  # pylint: disable=import-outside-toplevel
  logging.getLogger(__name__).info("compiling the train step of %s for %s", args.config, args.topology)
  report = aot.compile_train_step(config, devices)
  for line in report.lines():
    print(line)
  return 0
