"""The `tiny_shapes` run: Show-o2's recipe, scaled down, end to end on one CPU.

`run(config, workdir)` is `showo2-jax train --config tiny_shapes --workdir DIR`.
Phases, each resumable (a finished phase is recorded in DIR/phases.json and
skipped; a training phase cut short resumes from its last checkpoint):

  world    DIR/world: shapes images, JSONL, LLaVA JSON, GIF clips (world.py);
           DIR/tokenizer: a BPE tokenizer trained on the world's sentences
  vae      DIR/vae: a Wan-architecture VAE trained by the same trainer
           (train.task "wan_vae"); DIR/vae/wan_vae: its params as an Orbax
           wan_vae checkpoint, with the measured latents_mean / latents_std
  latents  DIR/latents/{t2i,captions,llava}: `precompute-latents` with that VAE
  stage1   DIR/stage1: generation + captioning (train/trainer.py)
  stage2   DIR/stage2: generation + LLaVA questions, from stage 1's params
  report   DIR/samples.png, answers.txt, loss.png, metrics.json (report.py)

Every training phase writes Orbax checkpoints, TensorBoard events,
metrics.jsonl and its config.json in its own folder, like a pod run.

Re-running part of a finished run (to try a change without redoing the rest):
`--config.recipe.redo=stage2` forgets that phase and every later one (their
records in phases.json and their training folders) and runs them again;
`--config.recipe.stop_after=vae` stops once that phase is done.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import resource
import sys
import time

from showo2_jax import paths as paths_lib
from showo2_jax.convert import training_run

log = logging.getLogger(__name__)

PHASES = ("world", "vae", "latents", "stage1", "stage2", "report")
PHASE_TITLES = {
    "world": "shapes world (files) and tokenizer",
    "vae": "Wan-architecture VAE (L1 + KL) on the images",
    "latents": "precompute-latents with the trained VAE",
    "stage1": "stage 1: generation + captioning",
    "stage2": "stage 2: generation + questions, CFG caption dropout",
    "report": "samples.png, answers.txt, loss.png, metrics.json",
}
FINAL_PHASE = "stage2"
STATE_FILE = training_run.PHASES_FILE


class Paths:
  def __init__(self, workdir: str):
    self.root = workdir
    self.world = os.path.join(workdir, "world")
    self.tokenizer = os.path.join(workdir, "tokenizer")
    self.vae = os.path.join(workdir, "vae")
    self.vae_export = os.path.join(workdir, "vae", "wan_vae")
    self.latents = os.path.join(workdir, "latents")
    self.stage1 = os.path.join(workdir, "stage1")
    self.stage2 = os.path.join(workdir, "stage2")
    self.state = os.path.join(workdir, STATE_FILE)

  def latents_glob(self, name: str) -> str:
    return os.path.join(self.latents, name, "*.array_record")


def _load_state(paths: Paths) -> dict:
  if os.path.exists(paths.state):
    with open(paths.state, encoding="utf-8") as f:
      return json.load(f)
  return {"final_run": FINAL_PHASE, "phases": {}}


def _save_state(paths: Paths, state: dict) -> None:
  tmp = paths.state + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(state, f, indent=2)
  os.replace(tmp, paths.state)


def _say(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
  """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- phase configs


def _base(config):
  c = copy.deepcopy(config)
  del c.recipe
  return c


def vae_phase_config(config, paths: Paths):
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  r = config.recipe.vae
  c = _base(config)
  c.train.task = "wan_vae"
  c.train.kl_weight = float(r.kl_weight)
  c.train.mse_weight = float(r.get("mse_weight", 0.0))
  c.train.num_steps = int(r.num_steps)
  c.train.global_batch_size = int(r.batch_size)
  c.train.frozen = ()
  c.optim.learning_rate = float(r.learning_rate)
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 20
  c.checkpoint.every_steps = max(int(r.num_steps) // 2, 1)
  c.tokenizer_path = paths.tokenizer
  d = data_configs.base()
  d.streams.images = data_configs.stream("t2i", os.path.join(paths.world, "t2i.jsonl"),
                                         int(r.batch_size), min_res=(), cond_dropout_prob=0.0)
  d.stream_order = ("images",)
  d.seed = int(config.seed)
  c.data = d
  return c


def _stage_common(config, paths: Paths, name: str, vae_stats):
  r = config.recipe[name]
  c = _base(config)
  c.train.task = "showo2"
  c.train.num_steps = int(r.num_steps)
  c.train.global_batch_size = int(r.t2i_rows) + int(r.mmu_rows)
  c.tokenizer_path = paths.tokenizer
  c.vae_checkpoint = paths.vae_export
  c.vae.latents_mean, c.vae.latents_std = list(vae_stats[0]), list(vae_stats[1])
  c.checkpoint.every_steps = max(int(r.num_steps) // 3, 1)
  return c, r


def stage1_config(config, paths: Paths, vae_stats):
  """Stage 1 (spec 7.2): generation and captioning rows, ntp `ntp_coeff` (the original's
  0.2 unless the recipe says; tiny_shapes: 1.0) + flow 1.0, constant lr with warm-up.
  Nothing is frozen: there is no pre-trained LLM or SigLIP here."""
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  c, r = _stage_common(config, paths, "stage1", vae_stats)
  c.train.ntp_coeff, c.train.flow_coeff = float(r.get("ntp_coeff", 0.2)), 1.0
  c.train.frozen = ()
  c.optim.schedule = "constant_with_warmup"
  c.optim.warmup_steps = int(r.warmup_steps)
  c.optim.learning_rate = float(r.learning_rate)
  d = data_configs.stage1(paths.latents_glob("t2i"), paths.latents_glob("captions"),
                          batch_size_t2i=int(r.t2i_rows), batch_size_mmu=int(r.mmu_rows), min_res=())
  for s in d.streams.values():
    s.source = "array_record"
  d.seed = int(config.seed)
  c.data = d
  return c


def stage2_config(config, paths: Paths, vae_stats):
  """Stage 2 (spec 7.3): from stage 1's params; generation + LLaVA rows, ntp 1.0,
  cosine with 3% warm-up, the three stage-2 groups (time_embed in none, as the
  original), t2i captions dropped with probability 0.1 for CFG."""
  from configs import _train_common as tc  # pylint: disable=import-outside-toplevel
  from configs import data as data_configs  # pylint: disable=import-outside-toplevel
  c, r = _stage_common(config, paths, "stage2", vae_stats)
  c.train.ntp_coeff, c.train.flow_coeff = float(r.get("ntp_coeff", 1.0)), 1.0
  c.train.frozen = ()
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.03
  lrs = dict(ve=float(r.ve_learning_rate), proj=float(r.learning_rate), showo=float(r.learning_rate))
  for name, patterns in tc.STAGE2_GROUP_PATTERNS.items():
    c.optim.groups[name] = tc.group(patterns, lrs[name])
  c.init.from_checkpoint = paths.stage1
  d = data_configs.stage2(paths.latents_glob("t2i"), paths.latents_glob("llava"),
                          batch_size_t2i=int(r.t2i_rows), batch_size_mmu=int(r.mmu_rows),
                          min_res=(), stage="tuning")
  for s in d.streams.values():
    s.source = "array_record"
  d.streams.t2i.cond_dropout_prob = 0.1
  d.seed = int(config.seed) + 1
  c.data = d
  return c


# ----------------------------------------------------------------------------- phases


def phase_world(config, paths: Paths) -> dict:
  from showo2_jax.shapes import tokenizer as shapes_tokenizer, world  # pylint: disable=import-outside-toplevel
  w = config.recipe.world
  files = world.write_world(paths.world, num_images=int(w.num_images), num_clips=int(w.num_clips),
                            image_size=int(config.resolution), seed=int(w.seed),
                            num_heldout=int(w.num_heldout))
  shapes_tokenizer.build_tokenizer(paths.tokenizer)
  _say(f"[world] {files.num_images} images, {files.num_clips} clips, "
       f"{len(world.heldout_combos())} held-out combinations -> {paths.world}; tokenizer -> "
       f"{paths.tokenizer}")
  return {"num_images": files.num_images, "num_clips": files.num_clips}


def _train_phase(name: str, phase_config, workdir: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import console as console_lib, trainer  # pylint: disable=import-outside-toplevel
  console = console_lib.Console(name, enabled=jax.process_index() == 0)
  summary = trainer.train(phase_config, workdir, console=console)
  if summary["status"] != "done":
    raise Stopped(summary)
  return {"step": summary["step"],
          "final": {k: float(v) for k, v in summary["metrics"].items() if "loss" in k}}


class Stopped(Exception):
  """A training phase stopped before its last step (preemption)."""

  def __init__(self, summary):
    super().__init__(f"stopped at step {summary['step']} ({summary['status']})")
    self.summary = summary


def phase_vae(config, paths: Paths) -> dict:
  out = _train_phase("vae", vae_phase_config(config, paths), paths.vae)
  stats = export_vae(config, paths)
  out["latents_mean"], out["latents_std"] = list(stats[0]), list(stats[1])
  return out


def export_vae(config, paths: Paths):
  """Trained VAE params -> Orbax wan_vae with the measured latent statistics."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from showo2_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import vae_task  # pylint: disable=import-outside-toplevel
  cfg = vae_task.vae_config(config)
  abstract = jax.eval_shape(vae_task.init_fn(cfg), jax.random.PRNGKey(0))
  params = orbax_io.restore_run_params(paths.vae, abstract)
  params = vae_task.host_params(params)
  with open(os.path.join(paths.world, "t2i.jsonl"), encoding="utf-8") as f:
    rels = [json.loads(line)["path"] for line in f if line.strip()][:512]
  pixels = np.stack([np.asarray(Image.open(os.path.join(paths.world, p)).convert("RGB"), np.float32)
                     for p in rels]).transpose(0, 3, 1, 2) / 127.5 - 1.0
  mean, std = vae_task.latent_stats(params, cfg, pixels)
  cfg = dataclasses.replace(cfg, latents_mean=mean, latents_std=std)
  orbax_io.save_params(paths.vae_export, params, cfg, kind="wan_vae", overwrite=True)
  _say(f"[vae] exported to {paths.vae_export} (latent std per channel "
       f"{', '.join(f'{s:.2f}' for s in std)})")
  return mean, std


LATENT_JOBS = ("t2i", "captions", "llava")


def _latents_option(config) -> tuple:
  """recipe.latents.posterior_mean: the latent jobs stored as the posterior mean only
  (`precompute-latents --deterministic`); the others keep `latents_logvar` and are
  sampled every step (spec 6.6). ValueError names the flag."""
  names = tuple(config.recipe.get("latents", {}).get("posterior_mean", ()) or ())
  bad = [n for n in names if n not in LATENT_JOBS]
  if bad:
    raise ValueError(f"--config.recipe.latents.posterior_mean: {', '.join(bad)} is not a latent "
                     f"job; choose from {', '.join(LATENT_JOBS)}")
  return names


def phase_latents(config, paths: Paths) -> dict:
  from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import latents  # pylint: disable=import-outside-toplevel
  jobs = (("t2i", "image_text", "t2i.jsonl"), ("captions", "image_text", "captions.jsonl"),
          ("llava", "llava", "llava.json"))
  model_config = config_lib.load_config(config.get("config_name", "tiny_shapes"))
  mean_only = set(_latents_option(config))
  for name, kind, file in jobs:
    out = os.path.join(paths.latents, name)
    result = latents.precompute(
        model_config, kind=kind, data=os.path.join(paths.world, file), out=out, encoder="wan",
        vae_weights=paths.vae_export, resolution=int(config.resolution), batch_size=64,
        records_per_shard=100000, threads=2, seed=0, deterministic=name in mean_only)
    _say(latents.summary(result, out))
  return {}


def phase_stage(name: str):
  def run_phase(config, paths: Paths, state) -> dict:
    stats = (state["phases"]["vae"]["latents_mean"], state["phases"]["vae"]["latents_std"])
    build = stage1_config if name == "stage1" else stage2_config
    return _train_phase(name, build(config, paths, stats), getattr(paths, name))
  return run_phase


def phase_report(config, paths: Paths, state) -> dict:
  from showo2_jax.shapes import report  # pylint: disable=import-outside-toplevel
  return report.write_report(config, paths, state)


# ----------------------------------------------------------------------------- driver


def _phase_option(config, key: str):
  """recipe.redo / recipe.stop_after: a phase name or None; ValueError names the flag."""
  value = config.recipe.get(key) or None
  if value is not None and value not in PHASES:
    raise ValueError(f"--config.recipe.{key}={value}: not a phase; choose from {', '.join(PHASES)}")
  return value


def forget_from(paths: Paths, state: dict, phase: str) -> list:
  """Forgets `phase` and every later phase: their phases.json records and their training
  folders (so they start afresh, not from their old checkpoints). Returns their names."""
  import shutil  # pylint: disable=import-outside-toplevel
  later = list(PHASES[PHASES.index(phase):])
  for name in later:
    state["phases"].pop(name, None)
    folder = {"vae": paths.vae, "latents": paths.latents, "stage1": paths.stage1,
              "stage2": paths.stage2}.get(name)
    if folder and os.path.isdir(folder):
      shutil.rmtree(folder)
  _save_state(paths, state)
  return later


def run(config, workdir: str) -> dict:
  """Runs the phases not yet done; returns the state (phases.json). Raises ValueError
  for a `gs://` workdir (this toy recipe writes its world and report locally) and for
  a recipe.redo / recipe.stop_after that names no phase."""
  if paths_lib.is_uri(workdir):
    raise ValueError(f"--workdir {workdir}: the tiny_shapes recipe needs a local folder (its "
                     "world, tokenizer and report are written with local file calls)")
  redo, stop_after = _phase_option(config, "redo"), _phase_option(config, "stop_after")
  os.makedirs(workdir, exist_ok=True)
  paths = Paths(workdir)
  state = _load_state(paths)
  if redo is not None and redo in state["phases"]:
    _say(f"recipe.redo={redo}: running {', '.join(forget_from(paths, state, redo))} again")
  done = state["phases"]
  if all(p in done for p in PHASES):
    _say(f"{workdir}: this run is complete (all {len(PHASES)} phases done; "
         "--config.recipe.redo=report writes the report again, redo=PHASE redoes a phase and "
         "those after it).")
    print_next_steps(paths, state)
    return state
  t_all = time.perf_counter()
  for i, name in enumerate(PHASES):
    if name in done:
      _say(f"== {i + 1}/{len(PHASES)} {name}: done earlier ({done[name]['seconds']:.0f} s), skipped")
      continue
    _say(f"== {i + 1}/{len(PHASES)} {name}: {PHASE_TITLES[name]}")
    t0 = time.perf_counter()
    if name == "world":
      out = phase_world(config, paths)
    elif name == "vae":
      out = phase_vae(config, paths)
    elif name == "latents":
      out = phase_latents(config, paths)
    elif name in ("stage1", "stage2"):
      out = phase_stage(name)(config, paths, state)
    else:
      out = phase_report(config, paths, state)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    done[name] = out
    _save_state(paths, state)
    _say(f"== {name} done in {out['seconds']:.0f} s")
    if name == stop_after:
      _say(f"recipe.stop_after={name}: stopping here; run again without it to go on")
      return state
  _say(f"all phases done in {time.perf_counter() - t_all:.0f} s this session")
  print_next_steps(paths, state)
  return state


def print_next_steps(paths: Paths, state: dict) -> None:
  rep = state["phases"].get("report", {})
  ev = rep.get("eval", {})
  if ev:
    _say("eval-shapes (held-out prompts and images): " + ", ".join(
        f"{k} {v:.2f}" for k, v in ev.items() if isinstance(v, float)))
  root = paths.root
  from showo2_jax.shapes import world  # pylint: disable=import-outside-toplevel
  held = os.path.join(root, "world", "heldout", "000.png")
  try:   # worlds written before heldout/ existed have no image to point at
    scenes, _ = world.read_heldout(os.path.join(root, "world", "heldout.json"))
    caption = f"   # a held-out image: {scenes[0].caption()}" if os.path.exists(held) else ""
  except (OSError, ValueError, KeyError, IndexError):
    caption = ""
  _say("\n".join([
      f"look at: {os.path.join(root, 'samples.png')}, {os.path.join(root, 'answers.txt')}, "
      f"{os.path.join(root, 'loss.png')}, {os.path.join(root, 'metrics.json')}",
      "next:",
      f"  showo2-jax generate --checkpoint {root} \"a blue square on the left\" --out {root}/generated",
      f"  showo2-jax understand --checkpoint {root} --image {held} "
      f"--question \"What shape is it?\"" + caption,
      f"  showo2-jax eval-shapes --workdir {root}",
      f"  tensorboard --logdir {root}"]))
