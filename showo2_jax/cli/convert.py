"""`showo2-jax convert`: checkpoints between PyTorch and Orbax, both ways, verified.

  showo2-jax convert to-orbax --torch DIR_OR_FILE --out ORBAX_DIR [--dtype bfloat16]
  showo2-jax convert to-torch --orbax ORBAX_DIR --out DIR [--max-shard-size 5GB]
  showo2-jax convert verify   --torch DIR_OR_FILE --orbax ORBAX_DIR
  showo2-jax convert export-run --workdir RUN_DIR --out ORBAX_DIR [--step N]

See docs/convert.md for the layouts understood and what each file holds.
"""
from __future__ import annotations

import argparse
import json
import logging

from showo2_jax.cli.main import CliError

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="convert_command", metavar="SUBCOMMAND")

  p = sub.add_parser("to-orbax", help="PyTorch checkpoint (Show-o2, Wan VAE, Qwen2.5, SigLIP) -> Orbax",
                     description="Converts a PyTorch-side checkpoint into an Orbax checkpoint, one "
                                 "tensor at a time; the config is stored with it.")
  p.add_argument("--torch", required=True, metavar="DIR_OR_FILE",
                 help="a Show-o2 model directory, Wan2.1_VAE.pth, or a HF Qwen2.5 / SigLIP directory")
  p.add_argument("--out", required=True, metavar="ORBAX_DIR", help="Orbax checkpoint directory to create")
  p.add_argument("--kind", choices=("showo2", "wan_vae", "qwen2", "siglip"),
                 help="force the layout instead of detecting it")
  p.add_argument("--dtype", choices=DTYPE_CHOICES, help="cast every tensor (default: keep the source dtype)")
  p.add_argument("--scan-layers", action="store_true",
                 help="stack decoder layers on a leading axis (for models run with scan_layers=True)")
  p.add_argument("--resize-vocab", type=int, metavar="N",
                 help="Qwen2: keep the first N embedding/LM-head rows (as resize_token_embeddings)")
  p.add_argument("--chunk-size", default="256MiB", metavar="SIZE",
                 help="bytes held in memory before each Orbax write (default: 256MiB)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

  p = sub.add_parser("to-torch", help="Orbax -> the checkpoint the original PyTorch code loads",
                     description="Writes Show-o2 as the original loads it (pytorch_model.bin, sharded "
                                 "above --max-shard-size with an index), Qwen2/SigLIP as HF safetensors, "
                                 "with the original key names, dtypes and config files.")
  p.add_argument("--orbax", required=True, metavar="ORBAX_DIR")
  p.add_argument("--out", required=True, metavar="DIR")
  p.add_argument("--dtype", choices=DTYPE_CHOICES + ("source",),
                 help="cast every tensor, or 'source' for the dtypes of the converted source "
                      "(default: the stored dtypes)")
  p.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                 help="shard above this size, with an index (default: 5GB)")
  p.add_argument("--chunk-size", default="256MiB", metavar="SIZE",
                 help="bytes read from Orbax at a time (default: 256MiB)")
  p.add_argument("--format", choices=("bin", "safetensors"),
                 help="weights format (default: bin for Show-o2, as its scripts load with "
                      "use_safetensors=False; safetensors for Qwen2 / SigLIP)")
  p.add_argument("--llm-model-path",
                 help="Show-o2: llm_model_path in config.json (default: the source's, else "
                      "Qwen/Qwen2.5-{1.5B,7B}-Instruct by width, else a written llm/ config folder)")
  p.add_argument("--clip-model-path",
                 help="Show-o2: clip_pretrained_model_path in config.json (default: the source's, "
                      "else google/siglip-so400m-patch14-384)")
  p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

  p = sub.add_parser("verify", help="compare a PyTorch checkpoint with an Orbax one, tensor by tensor",
                     description="Prints a summary; exits 1 on any difference, missing, unexpected or "
                                 "wrong-shape tensor.")
  p.add_argument("--torch", required=True, metavar="DIR_OR_FILE")
  p.add_argument("--orbax", required=True, metavar="ORBAX_DIR")
  p.add_argument("--json", action="store_true", help="also print the report as JSON")

  p = sub.add_parser("export-run", help="params of a training run -> Orbax checkpoint (for to-torch)",
                     description="Keeps only the params of a `showo2-jax train` checkpoint (no optimizer "
                                 "state), with the model config, as `to-torch` and the inference "
                                 "commands read them.")
  p.add_argument("--workdir", required=True, metavar="RUN_DIR", help="the --workdir of a training run")
  p.add_argument("--out", required=True, metavar="ORBAX_DIR")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
  # Orbax (through absl) and JAX's backend probing log at INFO; keep ours readable.
  for name in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from showo2_jax.convert import pipeline, verify  # pylint: disable=import-outside-toplevel
  cmd = getattr(args, "convert_command", None)
  if cmd is None:
    raise CliError("choose a subcommand: to-orbax, to-torch, verify or export-run (see --help)")
  try:
    if cmd == "to-orbax":
      summary = pipeline.to_orbax(
          args.torch, args.out, kind=args.kind, dtype=args.dtype, scan_layers=args.scan_layers,
          resize_vocab=args.resize_vocab, chunk_bytes=pipeline.parse_size(args.chunk_size),
          overwrite=args.overwrite)
      print(f"wrote {summary['kind']} checkpoint {summary['out']}: {summary['tensors']} tensors, "
            f"{summary['bytes'] / 1e9:.3f} GB in {summary['seconds']} s")
      return 0
    if cmd == "to-torch":
      summary = pipeline.to_torch(
          args.orbax, args.out, dtype=args.dtype, max_shard_size=pipeline.parse_size(args.max_shard_size),
          chunk_bytes=pipeline.parse_size(args.chunk_size), overwrite=args.overwrite,
          llm_model_path=args.llm_model_path, clip_model_path=args.clip_model_path,
          format=args.format)
      print(f"wrote {summary['kind']} checkpoint {summary['out']}: {summary['tensors']} tensors in "
            f"{len(summary['files'])} files ({', '.join(summary['files'])}) in {summary['seconds']} s")
      return 0
    if cmd == "export-run":
      from showo2_jax.convert import training_run  # pylint: disable=import-outside-toplevel
      summary = training_run.export_run(args.workdir, args.out, args.step, overwrite=args.overwrite)
      print(f"exported {summary['params']} params from {summary['source']} to {summary['out']}")
      return 0
    report = verify.verify(args.torch, args.orbax)
  except (pipeline.ConversionError, FileExistsError) as e:
    raise CliError(str(e)) from e
  print(report.format())
  if args.json:
    print(json.dumps({"ok": report.ok, "compared": report.compared, "exact": report.exact,
                      "differing": report.differing, "missing": report.missing,
                      "unexpected": report.unexpected, "wrong_shape": report.wrong_shape,
                      "ignored": report.ignored}))
  return 0 if report.ok else 1
