"""The training loop: resume or init, step, log, check, checkpoint, stop.

`train(config, workdir)` is the whole run. The order of things is what makes
runs resumable and safe:
- restore the latest complete checkpoint (state *and* data position) before
  reading any batch; otherwise warm-start or random-init;
- if the batches carry pixels (no latents), load the frozen VAE from
  `config.vae_checkpoint` and pass its params to every step (they are not part
  of the state, so a restart reloads them rather than reading a checkpoint);
- step s uses the key fold_in(base key, s), so t, noise and clean-context draws
  are functions of the step, and a restarted run repeats the uninterrupted one;
- metrics of a step are fetched one step late (the next step is already queued,
  the device never idles) except at checkpoints, which wait for the step's own
  loss: a NaN/Inf loss or gradient stops the run before anything non-finite is
  saved, and params are checked before every save, so the last checkpoint is
  always a good one;
- preemption: on one process, SIGTERM sets a flag the loop polls; on many, no
  Python handler is installed (it would replace the one jax.distributed installs)
  and jax's preemption sync point (`multihost_utils.reached_preemption_sync_point`,
  polled every step) picks the same step on every host, however many of them got
  SIGTERM and when. Either way: save at that step, wait for the write, return.
- the workdir is a local folder or a URI (`gs://bucket/run`): everything the run
  writes goes through `showo2_jax.paths`.
"""
from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Optional

import jax
import numpy as np

from showo2_jax import paths, sharding as sharding_lib
from showo2_jax.train import checkpointing, metrics as metrics_lib, optimizer as optimizer_lib
from showo2_jax.train import data as data_lib, distributed, partition, tasks, warm_start
from showo2_jax.train import state as state_lib, step as step_lib, vae_encoder
from showo2_jax.train import workdir as workdir_lib

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what an orchestrator expects from a preempted job


class NonFiniteLossError(RuntimeError):
  """Loss or gradient norm became NaN/Inf; the run stopped without saving."""


class PreemptionGuard:
  """Turns SIGTERM into a flag the loop polls between steps (single process only:
  under jax.distributed, SIGTERM belongs to jax's preemption notifier)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners)
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _host_key(rng_array) -> np.ndarray:
  return np.asarray(rng_array.addressable_shards[0].data)


def _finite(metrics: dict) -> bool:
  return all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm") if k in metrics)


def build_state(task, config, lay, ckpt: checkpointing.Checkpointer, iterator):
  """(state, restored step or None)."""
  state, restored = ckpt.restore_latest(lay.abstract, iterator)
  if restored is not None:
    return state, restored
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  params = state_lib.init_params(task.init_params, lay, init_rng)
  params = warm_start.load(params, config.init, lay.abstract.params, task.model_config)
  return state_lib.create(params, state_lib.place(step_rng, lay.abstract.rng), lay), None


def load_vae_if_needed(config, first_batch, mesh):
  """(VaeEncoder, replicated params) when the batches carry pixels but no latents,
  else (None, None): precomputed latents never load the VAE."""
  if "pixel_values" not in first_batch or "latents" in first_batch:
    return None, None
  if not vae_encoder.uses_vae(config):
    raise ValueError(
        "batches carry pixel_values but no latents, and config.vae_checkpoint is empty: set it "
        "to Wan2.1_VAE.pth (or a .safetensors, a diffusers VAE directory, an Orbax wan_vae "
        "checkpoint) to encode pixels in the step, or, faster, train from precomputed latents "
        "(showo2-jax precompute-latents, then an array_record data source)")
  return vae_encoder.load_params(config, mesh)


def _with_vae(train_step, vae_params, state, batch, rng):
  return train_step(state, batch, rng, vae_params)


def _compile_step(jitted_step, state, batch, rng, vae_params=None):
  """Compiles the step ahead of its first run; returns `(state, batch, rng) -> (state, metrics)`.

  In a multi-process run every process then waits at a barrier, so all start the
  step together: a host that finished compiling first would otherwise sit in the
  step's first CPU (gloo) collective, which fails when a peer is 30 s late.
  """
  args = (state, batch, rng) + (() if vae_params is None else (vae_params,))
  compiled = jitted_step.lower(*args).compile()
  distributed.barrier("showo2/train_step_compiled")
  if vae_params is None:
    return compiled
  return functools.partial(_with_vae, compiled, vae_params)


def train(config, workdir: str, console=None) -> dict:
  """Runs (or resumes) a training run; returns a summary dict with `status`.

  `console`: a `train.console.Console` for the terminal (progress bar, losses,
  the compile line), or None for none (library use; the log still gets them).
  Raises workdir.WorkdirError if `workdir` is a file or holds another config's run.
  """
  workdir_lib.check(config, workdir)
  workdir = paths.as_str(workdir)
  paths.makedirs(workdir)
  primary = jax.process_index() == 0
  if primary:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  task = tasks.build(config)
  t = config.train
  num_steps = int(t.num_steps)
  abstract = state_lib.abstract_state(
      task.init_params, lambda labels: optimizer_lib.make_optimizer(config.optim, num_steps, labels),
      task.labels)
  mesh = sharding_lib.create_mesh(config.mesh, fit_to=abstract.boxed)
  data_lib.check_global_batch(int(t.global_batch_size), mesh, int(t.grad_accum_steps))
  writers = metrics_lib.Writers(workdir, primary, bool(t.get("tensorboard", True)))
  ckpt = checkpointing.Checkpointer(paths.join(workdir, "checkpoints"),
                                    every_steps=config.checkpoint.every_steps,
                                    keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save,
                                    layout=data_lib.layout(config))
  schedules = optimizer_lib.schedules(config.optim, num_steps)
  try:
    with jax.set_mesh(mesh), sharding_lib.axis_rules():
      lay = state_lib.layout_of(abstract, mesh)
      counts = partition.summary(lay.abstract.params, lay.labels)
      log.info("params per group: %s", {k: f"{v / 1e6:.2f}M" for k, v in sorted(counts.items())})
      iterator = task.make_iterator(mesh)
      state, restored = build_state(task, config, lay, ckpt, iterator)
      return _loop(config, task, lay, state, restored, iterator, ckpt, writers, schedules, workdir,
                   console)
  finally:
    if console is not None:
      console.close()
    ckpt.close()
    writers.close()


def _loop(config, task, lay, state, restored, iterator, ckpt, writers, schedules, workdir,
          console=None) -> dict:
  t = config.train
  num_steps, global_batch = int(t.num_steps), int(t.global_batch_size)
  step = int(restored or 0)
  base_key = _host_key(state.rng)
  first = next(iterator)
  # Only Show-o2 steps encode pixels with a frozen VAE (a VAE-training task reads them raw).
  encoder, vae_params = (load_vae_if_needed(config, first, lay.mesh) if task.name == "showo2"
                         else (None, None))
  batch_spec = data_lib.slots_by_row(data_lib.step_fields(first))
  jitted_step = step_lib.jit_train_step(
      step_lib.make_train_step(task.objective, lay, grad_accum_steps=int(t.grad_accum_steps),
                               schedules=schedules, encoder=encoder),
      lay, batch_spec, with_vae=encoder is not None)
  train_step = None  # compiled ahead of the first step, below
  tokens_per_step = global_batch * task.tokens_per_row
  report = metrics_lib.ThroughputReport(num_steps, tokens_per_step, t.report_every, writers)
  profile = metrics_lib.profiler(workdir, int(t.profile_steps), int(t.profile_start))
  model_cfg = config.get("model", {})
  log.info("training %s from step %d to %d: global batch %d, %d tokens/step, mesh %s, attention %s, "
           "remat %s", task.name, step, num_steps, global_batch, tokens_per_step, dict(lay.mesh.shape),
           model_cfg.get("attention_impl", "dense"), model_cfg.get("remat_policy", "none"))
  pending: Optional[tuple[int, dict]] = None
  last: dict = {}
  status = "done"
  local = first
  check_every = max(int(t.get("check_finite_every", 1)), 1)

  def settle(entry):
    """Fetch one step's metrics; log them; stop on non-finite values."""
    s, m = entry
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not _finite(m):
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss at step {s} (loss={m.get('loss')}, grad_norm={m.get('grad_norm')}); "
          f"stopped without saving. Last good checkpoint: "
          f"{'none' if good is None else paths.join(ckpt.directory, str(good))}")
    # Samples the input pipeline skipped so far on this host (bad files or records,
    # filtered ones), as data/num_bad and data/num_filtered.
    m.update({f"data/{k}": float(v) for k, v in (getattr(iterator, "skip_counts", None) or {}).items()})
    if s % int(t.log_every) == 0 or s == num_steps:
      writers.write_scalars(s, m)
      if console is not None:
        console.scalars(s, num_steps, m)
    return m

  with PreemptionGuard() as guard:
    report.start(step)
    while step < num_steps:
      if profile is not None:
        profile(step)
      batch = data_lib.to_global(local, lay.mesh, global_batch)
      rng = np.asarray(jax.random.fold_in(base_key, step))
      first_step = pending is None and step == int(restored or 0)
      if train_step is None:
        if console is not None:
          console.compiling(step, num_steps)
        train_step = _compile_step(jitted_step, state, batch, rng, vae_params)
      state, m = train_step(state, batch, rng)
      step += 1
      if first_step:
        # Compilation is over once the first step's outputs exist: the bar and the
        # throughput report start here, so their rates and ETAs are training's.
        jax.block_until_ready(m)
        report.start(step)
        if console is not None:
          console.compiled(step, num_steps)
      if pending is not None and (pending[0] % check_every == 0 or pending[0] % int(t.log_every) == 0):
        last = settle(pending)
      pending = (step, m)
      preempted = guard.requested or (jax.process_count() > 1 and ckpt.reached_preemption(step))
      if step == num_steps or preempted or ckpt.should_save(step):
        last = settle(pending)
        pending = None
        try:
          ckpt.save(step, state, iterator, force=True)
        except checkpointing.NonFiniteParamsError as e:
          ckpt.wait()
          good = ckpt.latest_step()
          raise NonFiniteLossError(
              f"{e} (loss={last.get('loss')}). Last good checkpoint: "
              f"{'none' if good is None else paths.join(ckpt.directory, str(good))}") from None
      report(step)
      if console is not None:
        console.update(step)
      if preempted:
        log.warning("preempted: checkpoint of step %d written; exiting", step)
        status = "preempted"
        break
      if step < num_steps:
        local = next(iterator)
  ckpt.wait()
  writers.flush()
  if console is not None:
    console.close()
  return {"status": status, "step": step, "metrics": last}
