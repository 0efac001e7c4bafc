"""The server's device loop: requests arriving close together run as one batch.

Every JAX call happens on one worker thread. HTTP handlers validate and
prepare a job (tokens, decoded images) on their own threads, `submit` it and
await its future. The worker takes the oldest waiting job, waits at most
`window_s` after that job *arrived* for compatible jobs (same kind and, for
images, same steps / guidance), and runs them together:

  * chat: one `decode.generate` call. Rows are padded to a batch bucket
    (1, 2, 4, 8, ...), prompts left-aligned to a power-of-two width (>= 64),
    images to a power-of-two slot count, new tokens to a power-of-two cap.
    Temperature, top_p and max_tokens are per-row traced values, so requests
    with different settings share one compiled program. Tokens are pushed to
    streaming requests from the decoding loop as they are produced.
  * images (generations and edits): one `visual.sample_latents` call over all
    the images asked for, padded to a batch bucket; each request's noise comes
    from its own seed (`fold_in(seed, i)`), so its images do not depend on
    what it was batched with.

Each distinct bucket compiles once; with `jax_compilation_cache_dir` set (the
`serve` command sets it) compilations persist across restarts. A job never
waits for another batch longer than that batch's own run (FIFO), and a bad
input is rejected before it reaches the worker, so it cannot fail a batch.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax import paths
from showo2_jax.flow import transport
from showo2_jax.sample import decode, understanding
from showo2_jax.sample import prefix as prefix_lib
from showo2_jax.sample.pipeline import FlowSampling, Pipeline
from showo2_jax.sample.tokens import GREEDY
from showo2_jax.serve.text import TextStream

log = logging.getLogger(__name__)

MIN_PROMPT_BUCKET = 64
MIN_NEW_TOKENS_BUCKET = 16


def pow2_bucket(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  b = max(minimum, 1)
  while b < n:
    b *= 2
  return b


@dataclasses.dataclass
class ChatJob:
  """One chat completion: a prompt row (sequences.conversation_prompt) and its images."""
  row: dict
  images: list                    # PIL images, one per visual slot of the row, in order
  temperature: float
  top_p: float
  max_tokens: int
  stop: list
  on_text: Optional[Callable[[str], None]] = None   # streaming: called with each delta
  kind: str = "chat"
  arrival: float = dataclasses.field(default_factory=time.monotonic)
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

  @property
  def key(self):
    return ("chat",)


@dataclasses.dataclass
class ChatResult:
  text: str
  finish_reason: str
  prompt_tokens: int
  completion_tokens: int


@dataclasses.dataclass
class ImageJob:
  """n images for one prompt (token ids), optionally edits of a source image."""
  prompt_ids: list
  n: int
  sampling: FlowSampling
  seed: int
  source: Any = None              # PIL image for /v1/images/edits
  kind: str = "image"
  arrival: float = dataclasses.field(default_factory=time.monotonic)
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

  @property
  def key(self):
    return ("image", self.sampling, self.source is not None)


class Engine:
  """Owns the pipeline and the worker thread; `submit` jobs from any thread."""

  def __init__(self, pipe: Pipeline, *, max_batch: int = 8, window_s: float = 0.01,
               max_new_tokens: int = 1024):
    self.pipe = pipe
    self.max_batch = max_batch
    self.window_s = window_s
    self.max_new_tokens = max_new_tokens
    self._pending: list = []
    self._cv = threading.Condition()
    self._running = False
    self._thread: Optional[threading.Thread] = None
    self._rng_counter = 0
    self.stats = {"batches": 0, "jobs": 0, "max_batch_seen": 0}

  # ------------------------------------------------------------------ lifecycle
  def start(self) -> "Engine":
    self._running = True
    self._thread = threading.Thread(target=self._loop, name="showo2-engine", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    with self._cv:
      self._running = False
      self._cv.notify_all()
    if self._thread is not None:
      self._thread.join(timeout=60)
    for job in self._pending:
      job.future.set_exception(RuntimeError("the server is shutting down"))
    self._pending.clear()

  def submit(self, job) -> concurrent.futures.Future:
    with self._cv:
      if not self._running:
        raise RuntimeError("the engine is not running")
      self._pending.append(job)
      self._cv.notify_all()
    return job.future

  # ----------------------------------------------------------------- the loop
  def _size(self, job) -> int:
    return job.n if isinstance(job, ImageJob) else 1

  def _next_batch(self) -> Optional[list]:
    with self._cv:
      while self._running and not self._pending:
        self._cv.wait()
      if not self._running:
        return None
      head = self._pending[0]
      deadline = head.arrival + self.window_s
      while True:
        batch, rows = [], 0
        for job in self._pending:
          if job.key == head.key and (not batch or rows + self._size(job) <= self.max_batch):
            batch.append(job)
            rows += self._size(job)
        remaining = deadline - time.monotonic()
        if rows >= self.max_batch or remaining <= 0:
          break
        self._cv.wait(remaining)
      for job in batch:
        self._pending.remove(job)
      return batch

  def _loop(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      live = [j for j in batch if j.future.set_running_or_notify_cancel()]
      if not live:
        continue
      self.stats["batches"] += 1
      self.stats["jobs"] += len(live)
      self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(live))
      try:
        if isinstance(live[0], ChatJob):
          results = self.run_chat(live)
        else:
          results = self.run_images(live)
      except Exception as e:  # pylint: disable=broad-except
        log.exception("batch of %d %s jobs failed", len(live), live[0].kind)
        for job in live:
          job.future.set_exception(e)
        continue
      for job, result in zip(live, results):
        job.future.set_result(result)

  # --------------------------------------------------------------------- chat
  def _next_rng(self) -> jax.Array:
    self._rng_counter += 1
    return jax.random.PRNGKey(self._rng_counter)

  def chat_buckets(self, jobs) -> tuple[int, int, int, int]:
    """(batch rows, prompt width, image slots, new-token cap) of a chat batch."""
    b = pow2_bucket(len(jobs))
    width = pow2_bucket(max(j.row["prompt_length"] for j in jobs), MIN_PROMPT_BUCKET)
    m = pow2_bucket(max(len(j.images) for j in jobs)) if any(j.images for j in jobs) else 0
    new = min(pow2_bucket(max(j.max_tokens for j in jobs), MIN_NEW_TOKENS_BUCKET),
              self.max_new_tokens)
    return b, width, m, new

  def run_chat(self, jobs: list) -> list:
    pipe, sp = self.pipe, self.pipe.special
    b, width, m, max_new = self.chat_buckets(jobs)
    padded = jobs + [jobs[-1]] * (b - len(jobs))
    rows = [pipe.pad_slots(dict(j.row), max(m, 1)) for j in padded]
    vis = None
    if m:
      vis = self._chat_visual(padded, m)
    a = prefix_lib.align([list(r["text_tokens"][:r["prompt_length"]]) for r in rows], sp.pad,
                         placement=np.stack([r["modality_positions"] for r in rows]),
                         attention=np.stack([r["attention_modality_positions"] for r in rows]),
                         width=width)
    streams = [TextStream(pipe.tokenizer, eos_id=sp.eos, max_tokens=j.max_tokens, stop=j.stop)
               for j in jobs]
    temperature = jnp.asarray([j.temperature for j in padded], jnp.float32)
    top_p = jnp.asarray([j.top_p for j in padded], jnp.float32)
    row_max = jnp.asarray([min(j.max_tokens, max_new) for j in padded], jnp.int32)
    lock, state = threading.Lock(), {"next": 0, "steps": {}}

    def sink(step, tokens):
      # Runs on a JAX callback thread once per decoding step (maybe out of order).
      with lock:
        state["steps"][step] = tokens
        while state["next"] in state["steps"]:
          toks = state["steps"].pop(state["next"])
          state["next"] += 1
          for job, stream, tok in zip(jobs, streams, toks):
            if not stream.done:
              delta = stream.push(int(tok))
              if delta and job.on_text is not None:
                job.on_text(delta)

    # Always streamed through the sink (one compiled program whether or not a
    # client asked for a stream; the per-step host callback is cheap).
    stream_id = decode.open_stream(sink)
    try:
      decode.generate(
          pipe.model, pipe.params, a.tokens, a.shift, a.lengths, a.placement, a.attention, vis,
          decode.stop_array([sp.eos]), sp.pad, self._next_rng(), max_new_tokens=max_new,
          sampling=GREEDY, row_sampling=(temperature, top_p), row_max_new=row_max,
          stream_id=jnp.int32(stream_id)).tokens.block_until_ready()
      jax.effects_barrier()  # every step's callback has run
    finally:
      decode.close_stream(stream_id)
    results = []
    for job, stream in zip(jobs, streams):
      tail = stream.close()
      if tail and job.on_text is not None:
        job.on_text(tail)
      results.append(ChatResult(stream.text, stream.finish_reason or "length",
                                int(job.row["prompt_length"]), stream.num_tokens))
    return results

  def _chat_visual(self, jobs, m: int) -> jax.Array:
    """Clean visual blocks (B*M, 1 + N, D) of every job's images, K padded to a bucket."""
    pipe = self.pipe
    flat = [im for j in jobs for im in j.images]
    k = pow2_bucket(len(flat))
    pixels = np.stack([pipe.image_pixels(im, pipe.understanding_resolution) for im in flat]
                      + [pipe.image_pixels(flat[-1], pipe.understanding_resolution)] * (k - len(flat)))
    blocks = understanding.image_tokens(pipe.model, pipe.params, pipe.encode_pixels(pixels))
    index, i = [], 0
    for j in jobs:
      index += list(range(i, i + len(j.images))) + [-1] * (m - len(j.images))
      i += len(j.images)
    index = np.asarray(index, np.int32)
    gathered = jnp.take(blocks, jnp.asarray(np.maximum(index, 0)), axis=0)
    return jnp.where(jnp.asarray(index >= 0)[:, None, None], gathered, 0)

  # ------------------------------------------------------------------- images
  def run_images(self, jobs: list) -> list:
    """-> per job, uint8 images (n, H, W, 3)."""
    pipe = self.pipe
    sampling = jobs[0].sampling
    ids, noise, sources = [], [], []
    shape = pipe.latent_shape()
    for job in jobs:
      key = jax.random.PRNGKey(job.seed)
      for i in range(job.n):
        ids.append(job.prompt_ids)
        noise.append(transport.initial_noise(jax.random.fold_in(key, i), shape))
        if job.source is not None:
          sources.append(job.source)
    n = len(ids)
    b = pow2_bucket(n)
    ids += [ids[-1]] * (b - n)
    noise = jnp.stack(noise + [noise[-1]] * (b - n))
    src_latents = None
    if sources:
      sources += [sources[-1]] * (b - n)
      src_latents = pipe.encode_pixels(np.stack([pipe.image_pixels(s) for s in sources]))
    width = pow2_bucket(max(len(r) for r in ids) + 2 + (pipe.image_block + 2 if sources else 0),
                        MIN_PROMPT_BUCKET)
    latents = pipe.sample_latents(ids, noise, sampling, sources=src_latents, width=width)
    images = pipe.decode(np.asarray(latents)[:n])
    out, i = [], 0
    for job in jobs:
      out.append(images[i:i + job.n])
      i += job.n
    return out


def enable_compilation_cache(path: Optional[str]) -> Optional[str]:
  """Persistent XLA compilation cache (every bucket compiles once per machine)."""
  if not path:
    return None
  paths.makedirs(path)   # jax reads and writes the cache through etils.epath: gs:// works
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
