"""`showo2-jax train --config CONFIG --workdir DIR [--config.key=value ...]`.

CONFIG is a name under configs/ (`tiny_shapes`, `stage1_1p5b:b`, ...) or a path
to a config file. Re-running with the same workdir resumes from its latest
checkpoint. A config with a `recipe` block (`tiny_shapes`) runs several phases
in sub-folders of the workdir (showo2_jax/shapes/recipe.py).

On the terminal: a progress bar per phase that starts after the first step
(so its ETA is not compilation's), a "compiling" line before it, and the losses
every `train.log_every` steps. On a cluster, run the same command on every host: jax.distributed is
initialised from the environment (TPU pods, SLURM, ...) or from the flags below.
Exit codes: 0 done, 1 user error, 3 non-finite loss, 143 preempted (checkpoint
written; re-run to resume).
"""
from __future__ import annotations

import argparse
import logging
import os

from showo2_jax import paths
from showo2_jax.cli.main import CliError
from showo2_jax.train import config_overrides

log = logging.getLogger(__name__)


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("multi-host (default: detected from the environment)")
  g.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  g.add_argument("--num_processes", type=int, default=None)
  g.add_argument("--process_id", type=int, default=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True,
                      help="config name under configs/ or path to a config .py (optionally :arg)")
  parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events, metrics.jsonl")
  parser.add_argument("--data", default=None, metavar="FILE",
                      help="data streams (.py / .yaml / .json, see configs/data/): replaces the "
                           "config's data block, before --config.data.* overrides")
  add_distributed_arguments(parser)
  config_overrides.accept_overrides(parser)
  parser.epilog = "Override any config field with --config.<key>=<value>, e.g. --config.train.num_steps=100."


def load_config(args, *, check_data_paths: bool = True):
  """The config of `--config`, its data block replaced by `--data` (whose paths must
  match files with `check_data_paths`), then the `--config.*` overrides."""
  from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
  try:
    config = config_lib.load_config(args.config)
    if getattr(args, "data", None):
      from showo2_jax.data import data_file  # pylint: disable=import-outside-toplevel
      config.data = data_file.load(args.data, check_paths=check_data_paths)
    return config_overrides.apply(config, args.config_overrides)
  except (config_lib.UnknownConfigError, config_overrides.OverrideError) as e:
    raise CliError(str(e)) from None


def _not_an_orbax_traceback(record: logging.LogRecord) -> bool:
  """False for Orbax's logged tracebacks of a failed background save: the same
  error reaches the trainer, and the CLI prints it as one line (-v shows them)."""
  tb = record.exc_info[2] if record.exc_info else None
  while tb is not None:
    if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
      return False
    tb = tb.tb_next
  return True


def quiet_libraries(verbose: bool = False) -> None:
  """Orbax and absl log every save step at INFO, fsspec every read; keep ours readable."""
  for name in ("absl", "orbax", "fsspec"):
    logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose and _not_an_orbax_traceback not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_not_an_orbax_traceback)
  # gcsfs warns on every bucket whose type it cannot look up (an emulator, no credentials).
  logging.getLogger("gcsfs").setLevel(logging.ERROR)


FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


def fast_compile(config) -> None:
  """`xla_cpu_fast_compile`: XLA's CPU optimisation passes off, for tiny programs whose
  compilation costs more than their steps (must run before JAX starts its backend)."""
  if not config.get("xla_cpu_fast_compile", False):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()


def run(args) -> int:
  quiet_libraries(getattr(args, "verbose", False))
  config = load_config(args)
  if "train" not in config:
    raise CliError(f"config '{args.config}' has no train block; use a training config "
                   f"(tiny_shapes, tiny_train, stage1_1p5b, stage2_1p5b, ...)")
  if paths.isfile(args.workdir):
    raise CliError(f"--workdir: '{args.workdir}' is a file, not a directory")
  fast_compile(config)
  from showo2_jax.train import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  from showo2_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  try:
    return _train(config, args)
  except checkpointing.CheckpointSaveError as e:
    raise CliError(str(e)) from None


def _train(config, args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import console as console_lib, trainer  # pylint: disable=import-outside-toplevel
  if "recipe" in config:
    from showo2_jax.shapes import recipe  # pylint: disable=import-outside-toplevel
    try:
      recipe.run(config, args.workdir)
    except trainer.NonFiniteLossError as e:
      log.error("%s", e)
      return 3
    except recipe.Stopped:
      return trainer.EXIT_PREEMPTED
    return 0
  console = console_lib.Console("train", enabled=jax.process_index() == 0)
  try:
    summary = trainer.train(config, args.workdir, console=console)
  except trainer.NonFiniteLossError as e:
    log.error("%s", e)
    return 3
  if summary["status"] == "preempted":
    return trainer.EXIT_PREEMPTED
  m = summary["metrics"]
  log.info("finished at step %d: %s", summary["step"],
           ", ".join(f"{k}={v:.4f}" for k, v in m.items() if "loss" in k))
  return 0
