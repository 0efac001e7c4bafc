"""`showo2-jax` command line: one subcommand per module in this package.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `showo2-jax --help` is fast
and a command never pays for another's imports (e.g. tensorflow).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "check-parity": ("showo2_jax.cli.check_parity", "compare against golden outputs of the original PyTorch code"),
    "convert": ("showo2_jax.cli.convert", "convert checkpoints between PyTorch and Orbax"),
    "train": ("showo2_jax.cli.train", "train (stage 1, stage 2, mixed modality) on a mesh"),
    "compile": ("showo2_jax.cli.compile", "ahead-of-time compile a train step for a topology; print memory"),
    "precompute-latents": ("showo2_jax.cli.precompute", "encode a dataset with the VAE once, to ArrayRecord"),
    "generate": ("showo2_jax.cli.generate", "text-to-image (and text/image-to-video) generation"),
    "understand": ("showo2_jax.cli.understand", "answer questions about an image or a video"),
    "mixed": ("showo2_jax.cli.mixed", "mixed-modality (interleaved text and image) generation"),
    "edit": ("showo2_jax.cli.edit", "image editing: source image + instruction -> edited image"),
    "eval": ("showo2_jax.cli.eval", "GenEval / DPG-Bench sample folders (resumable, sharded over hosts)"),
    "eval-shapes": ("showo2_jax.cli.eval_shapes", "score a tiny_shapes run on held-out prompts and images"),
    "serve": ("showo2_jax.cli.serve", "OpenAI-compatible HTTP server: chat with images, image generation and editing"),
}


class CliError(Exception):
  """An error the user can fix; printed as one line, without a traceback."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse without prefix matching (`--dat` is not taken for `--data`), whose
  errors (unknown or missing flags, bad values) are one line and exit 1, like the
  commands' own errors. Subcommand parsers inherit it (argparse's parser_class)."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Libraries that log routine INFO lines: Orbax (through absl) ~10 per checkpoint
# load, JAX's backend probing ("Unable to initialize backend 'tpu'" on any host
# with libtpu installed). `-v` shows them.
NOISY_LOGGERS = ("absl", "orbax", "jax._src.xla_bridge")


@contextlib.contextmanager
def quiet_libraries(command: str, verbose: bool):
  """Raises the noisy libraries' loggers to WARNING while a command runs (restored
  afterwards, for callers that run several commands in one process). `train`
  keeps absl: its per-step lines are its own business (showo2_jax.cli.train)."""
  names = [] if verbose else [n for n in NOISY_LOGGERS if not (command == "train" and n == "absl")]
  saved = {n: logging.getLogger(n).level for n in names}
  for n in names:
    logging.getLogger(n).setLevel(logging.WARNING)
  try:
    yield
  finally:
    for n, level in saved.items():
      logging.getLogger(n).setLevel(level)


def skip_absent_tpu(command: str) -> None:
  """Keeps JAX from starting libtpu on a host without TPU chips.

  With libtpu installed (it is, for `compile`'s TPU topologies), JAX's default
  platform search loads it on any host, and libtpu prints several lines of errors
  to stderr when it finds no chip. Unless JAX_PLATFORMS is set (or the command is
  `compile`, which needs the TPU plugin for topologies), a host that JAX's own
  probe finds without TPU chips runs on "cuda,cpu" (with a CUDA plugin and an
  NVIDIA device) or "cpu", which is what it would have picked anyway.
  """
  if command == "compile" or os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_FORCE_TPU_INIT"):
    return
  try:
    import jax  # pylint: disable=import-outside-toplevel
    from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except
    return  # not knowable: leave JAX's default search alone
  if chips:
    return
  import glob  # pylint: disable=import-outside-toplevel
  cuda = (any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
          and glob.glob("/dev/nvidia[0-9]*"))
  jax.config.update("jax_platforms", "cuda,cpu" if cuda else "cpu")


def main(argv=None) -> int:
  # TensorFlow (TFDS, TensorBoard writers) prints a oneDNN banner from C++ at import.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  parser = ArgumentParser(prog="showo2-jax", description=__doc__.splitlines()[0])
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="also show the libraries' INFO logs (Orbax, JAX backends) and tracebacks")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  argv = sys.argv[1:] if argv is None else list(argv)
  wanted = next((a for a in argv if not a.startswith("-")), None)
  modules = {}
  for name, (module_name, help_) in COMMANDS.items():
    p = sub.add_parser(name, help=help_, description=help_)
    if name == wanted:
      modules[name] = importlib.import_module(module_name)
      modules[name].add_arguments(p)
  args, unknown = parser.parse_known_args(argv)
  if unknown:
    sub_parser = sub.choices.get(args.command, parser)
    sub_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if args.command is None:
    parser.print_help()
    return 2
  skip_absent_tpu(args.command)
  try:
    with quiet_libraries(args.command, args.verbose):
      return int(modules[args.command].run(args) or 0)
  except (CliError, FileNotFoundError, ValueError, KeyError) as e:
    if args.verbose or logging.getLogger().isEnabledFor(logging.DEBUG):
      raise
    print(f"showo2-jax {args.command}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  # `python -m showo2_jax.cli.main`: run the importable module, whose `CliError` is the
  # one the commands raise (this file's own copy, `__main__.CliError`, is another class).
  from showo2_jax.cli import main as _cli  # pylint: disable=import-self
  sys.exit(_cli.main())
