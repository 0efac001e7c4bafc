"""Arguments and loading shared by the inference commands (generate, understand, mixed).

Defaults come, in order, from the command line, the optional `--config` (its
`resolution`, `max_seq_len` and `sample.*` fields) and the built-in ones.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math

import jax

from showo2_jax import paths
from showo2_jax.convert import loading, training_run
from showo2_jax.sample.pipeline import Pipeline

log = logging.getLogger(__name__)


class InferenceSetupError(ValueError):
  """A user-fixable problem with the inference inputs (shown without a traceback)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("model")
  g.add_argument("--checkpoint", required=True,
                 help="a training workdir (showo2-jax train: its latest params, and its "
                      "tokenizer, VAE and sampling settings as defaults), an Orbax checkpoint "
                      "of showo2-jax, or the original Show-o2 directory (config.json + "
                      "pytorch_model.bin / model.safetensors)")
  g.add_argument("--tokenizer",
                 help="local Qwen2.5-Instruct tokenizer directory (Show-o2 tokens are added); "
                      "default for a training workdir: the run's tokenizer_path")
  g.add_argument("--vae", help="Wan2.1 VAE: Wan2.1_VAE.pth, a directory with config.json, "
                               "or an Orbax wan_vae checkpoint; default for a training workdir: "
                               "the run's vae_checkpoint")
  g.add_argument("--config", help="optional config name/path for defaults (resolution, "
                                  "max_seq_len, sample.*), e.g. showo2_1p5b_hq512")
  g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                 help="compute dtype; auto = bfloat16 on an accelerator (as the original), "
                      "float32 on CPU")
  g.add_argument("--resolution", type=int,
                 help="pixels per side (default: the checkpoint's for generation, 432 at full "
                      "size for understanding)")
  g.add_argument("--max-seq-len", type=int,
                 help="the original's sequence length, bounding the prompt (default by resolution)")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--no-progress", action="store_true", help="no progress bars")


# Checks of numeric flags: (predicate, what the value must be).
POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FINITE = (lambda v: math.isfinite(v), "a finite number")
FINITE_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
UNIT_INTERVAL = (lambda v: 0 < v <= 1, "in (0, 1]")
AT_LEAST_2 = (lambda v: v >= 2, "at least 2 (ODE grid points: N points = N-1 steps)")
MULTIPLE_OF_8 = (lambda v: v > 0 and v % VAE_STRIDE_PIXELS == 0,
                 "a positive multiple of 8 (the VAE stride; 16 with 2x2 patches)")
VAE_STRIDE_PIXELS = 8


def check_flags(args, rules: dict) -> None:
  """Raises InferenceSetupError naming the first flag whose value breaks its rule.

  rules: {flag: (predicate, requirement)}; flags not given (None) are not checked.
  Run before anything is loaded, so a typo costs nothing.
  """
  for flag, (ok, what) in rules.items():
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if value is not None and not ok(value):
      raise InferenceSetupError(f"{flag} {value}: must be {what}")


def check_model_arguments(args) -> None:
  """The shared model flags (see `add_model_arguments`)."""
  check_flags(args, {"--resolution": MULTIPLE_OF_8, "--max-seq-len": POSITIVE})


def check_output_file(flag: str, path) -> None:
  """A file the command will write at the end: its folder must exist, and it must not
  be a folder, so the work is not lost at the last step."""
  if path is None:
    return
  if paths.isdir(path):
    raise InferenceSetupError(f"{flag}: '{path}' is a directory (give a file name)")
  parent = paths.parent(path)
  if not paths.is_uri(parent) and not paths.isdir(parent):  # object-store folders are implicit
    raise InferenceSetupError(f"{flag}: the folder '{parent}' does not exist")


def make_output_dir(flag: str, path) -> None:
  """Creates the output folder now (before any work); a file in its place is an error."""
  if paths.isfile(path):
    raise InferenceSetupError(f"{flag}: '{path}' is a file, not a folder")
  try:
    paths.makedirs(path)
  except OSError as e:
    raise InferenceSetupError(f"{flag}: cannot create folder '{path}' ({e.strerror})") from None


def config_defaults(args) -> dict:
  """{'resolution', 'max_seq_len', 'sample': {...}} from --config, else from the
  training workdir given as --checkpoint (empty without either)."""
  spec = getattr(args, "config", None)
  if spec:
    return _config_defaults(spec)
  checkpoint = getattr(args, "checkpoint", None)
  if checkpoint and paths.isdir(checkpoint):
    run = training_run_defaults(args)
    return {k: run[k] for k in ("resolution", "max_seq_len", "sample") if run.get(k) is not None}
  return {}


@functools.lru_cache(maxsize=4)
def _config_defaults(spec) -> dict:
  if not spec:
    return {}
  from showo2_jax.config_lib import load_config  # pylint: disable=g-import-not-at-top
  cfg = load_config(spec)
  return {"resolution": cfg.resolution, "max_seq_len": cfg.max_seq_len,
          "sample": dict(cfg.sample)}


def sample_default(args, name: str, fallback):
  return config_defaults(args).get("sample", {}).get(name, fallback)


def resolve_dtype(name: str) -> str:
  if name != "auto":
    return name
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def training_run_defaults(args) -> dict:
  """For `--checkpoint` = a training workdir: the run's tokenizer, VAE, resolution,
  max_seq_len and sample settings (what its config.json says); else {}."""
  run = loading.resolve_training_run(args.checkpoint) if args.checkpoint else None
  if run is None:
    return {}
  cfg = loading.run_config(run)
  vae = cfg.get("vae_checkpoint") or None
  return {"tokenizer": cfg.get("tokenizer_path") or None,
          "vae": None if vae == "random" else vae,
          "resolution": cfg.get("resolution"), "max_seq_len": cfg.get("max_seq_len"),
          "sample": dict(cfg.get("sample", {}))}


def fill_from_training_run(args) -> None:
  """Fills --tokenizer / --vae from a training workdir's config when not given."""
  run = training_run_defaults(args)
  if not run:
    if args.checkpoint and paths.exists(paths.join(args.checkpoint, training_run.PHASES_FILE)):
      raise InferenceSetupError(f"--checkpoint {args.checkpoint}: a multi-phase training workdir "
                                "with no trained Show-o2 phase yet; run `showo2-jax train` on it "
                                "to the end first")
    if not args.tokenizer:
      raise InferenceSetupError("--tokenizer is required (unless --checkpoint is a training "
                                "workdir, whose config names its tokenizer)")
    return
  for flag in ("tokenizer", "vae"):
    if getattr(args, flag) is None and run.get(flag):
      setattr(args, flag, run[flag])
  if not args.tokenizer:
    raise InferenceSetupError(f"--tokenizer is required: the training run {args.checkpoint} "
                              "names no tokenizer_path")


def load_pipeline(args, need_vae: bool = False) -> Pipeline:
  """Builds the pipeline, turning missing files into one-line errors."""
  if args.checkpoint and not paths.exists(args.checkpoint):
    raise InferenceSetupError(f"--checkpoint: '{args.checkpoint}' does not exist")
  fill_from_training_run(args)
  for flag, path in (("--checkpoint", args.checkpoint), ("--tokenizer", args.tokenizer),
                     ("--vae", args.vae)):
    if path and not paths.exists(path):
      raise InferenceSetupError(f"{flag}: '{path}' does not exist")
  if need_vae and not args.vae:
    raise InferenceSetupError("this command needs the Wan VAE: pass --vae")
  defaults = config_defaults(args)
  dtype = resolve_dtype(args.dtype)
  check_model_arguments(args)
  pick = lambda a, d: a if a is not None else d
  try:
    pipe = Pipeline.load(
        args.checkpoint, args.tokenizer, args.vae, dtype=dtype,
        resolution=pick(args.resolution, defaults.get("resolution")),
        max_seq_len=pick(args.max_seq_len, defaults.get("max_seq_len")))
  except loading.CheckpointNotFoundError as e:
    raise InferenceSetupError(str(e)) from None
  log.info("loaded %s (%s, generation %d px, understanding %d px, max_seq_len %d)",
           args.checkpoint, dtype, pipe.resolution, pipe.understanding_resolution, pipe.max_seq_len)
  return pipe


def show_progress(args) -> bool:
  return not args.no_progress
