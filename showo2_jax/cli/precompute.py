"""`showo2-jax precompute-latents`: encode a dataset's media with the VAE once.

    showo2-jax precompute-latents --config showo2_1p5b --kind image_text \\
        --data data/t2i.jsonl --vae-weights Wan2.1_VAE.pth --out latents/t2i

Writes `latents-XXXXX-of-YYYYY.array_record` shards (records: the input record
plus `latents` and, unless --deterministic, `latents_logvar`, so training can
still draw the posterior sample the original draws every step). Train on them
with a stream `source='array_record', path='latents/t2i/*.array_record'`.
Rerunning skips finished shards; on several hosts each writes its own shards.
"""
from __future__ import annotations

from showo2_jax import paths
from showo2_jax.cli.main import CliError

KINDS = ("image_text", "llava", "vist", "video_text")


def add_arguments(parser):
  parser.add_argument("--config", default="tiny", help="config name or path (resolution, VAE)")
  parser.add_argument("--kind", choices=KINDS, required=True, help="record format of --data")
  parser.add_argument("--data", required=True,
                      help="annotation file, ArrayRecord glob (--source array_record) or TFDS dir")
  parser.add_argument("--source", choices=("files", "array_record", "tfds"), default="files")
  parser.add_argument("--media-root", default=None, help="media folder (default: next to --data)")
  parser.add_argument("--out", required=True, help="output folder for the shards")
  parser.add_argument("--encoder", choices=("wan", "pool"), default="wan",
                      help="wan: the Wan2.1 VAE; pool: 8x average pooling to 16 channels, a "
                           "VAE-free stand-in for pipeline dry runs")
  parser.add_argument("--vae-weights", default=None,
                      help="Wan2.1 VAE checkpoint (.pth/.safetensors, or an Orbax wan_vae "
                           "directory with its own config); required with --encoder wan "
                           "unless --random-vae")
  parser.add_argument("--random-vae", action="store_true",
                      help="encode with a randomly initialised Wan VAE (--seed): only for dry runs "
                           "of the data path, the latents mean nothing")
  parser.add_argument("--teacher", default=None, metavar="SIGLIP_DIR",
                      help="also store SigLIP features of each image (`latents_teacher`) from this "
                           "HF SigLIP directory: the records semantic-layer distillation reads")
  parser.add_argument("--teacher-layer", type=int, default=-1,
                      help="SigLIP hidden state to store: -1 = all layers but the last (the depth "
                           "of und_trans, default), k = after k layers")
  parser.add_argument("--deterministic", action="store_true",
                      help="store the posterior mean only (no latents_logvar)")
  parser.add_argument("--resolution", type=int, default=None, help="override the config's")
  parser.add_argument("--min-res", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="skip image-text images smaller than this")
  parser.add_argument("--num-frames", type=int, default=17, help="frames per video")
  parser.add_argument("--batch-size", type=int, default=16, help="images per encoder call")
  parser.add_argument("--records-per-shard", type=int, default=2048)
  parser.add_argument("--num-shards", type=int, default=None, help="default: from records-per-shard")
  parser.add_argument("--threads", type=int, default=4, help="threads decoding media")
  parser.add_argument("--process-index", type=int, default=None, help="default: jax.process_index()")
  parser.add_argument("--process-count", type=int, default=None, help="default: jax.process_count()")
  parser.add_argument("--seed", type=int, default=0, help="init of --random-vae")
  parser.add_argument("--no-progress", action="store_true")


def check_arguments(args) -> None:
  if args.encoder == "wan" and not args.vae_weights and not args.random_vae:
    raise CliError("--vae-weights is required: give the Wan2.1 VAE checkpoint (or --random-vae "
                   "for a dry run with meaningless latents, or --encoder pool)")
  if args.vae_weights and args.random_vae:
    raise CliError("--vae-weights and --random-vae exclude each other")
  if args.vae_weights and not paths.exists(args.vae_weights):
    raise CliError(f"--vae-weights: '{args.vae_weights}' does not exist")
  for flag in ("resolution", "batch_size", "records_per_shard", "num_shards", "num_frames",
               "threads"):
    value = getattr(args, flag)
    if value is not None and value <= 0:
      raise CliError(f"--{flag.replace('_', '-')} {value}: must be a positive number")


def run(args) -> int:
  check_arguments(args)
  from showo2_jax import config_lib  # pylint: disable=g-import-not-at-top
  from showo2_jax.train import latents  # pylint: disable=g-import-not-at-top
  result = latents.precompute(
      config_lib.load_config(args.config), kind=args.kind, data=args.data, out=args.out,
      source=args.source, media_root=args.media_root, encoder=args.encoder,
      vae_weights=args.vae_weights, random_vae=args.random_vae, teacher=args.teacher,
      teacher_layer=args.teacher_layer, deterministic=args.deterministic,
      resolution=args.resolution, min_res=args.min_res, num_frames=args.num_frames,
      batch_size=args.batch_size, records_per_shard=args.records_per_shard,
      num_shards=args.num_shards, threads=args.threads, process_index=args.process_index,
      process_count=args.process_count, seed=args.seed, progress=not args.no_progress)
  print(latents.summary(result, args.out))
  return 0
