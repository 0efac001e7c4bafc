"""Where training numbers go: TensorBoard, the log, and `metrics.jsonl`.

- clu's default writer: TensorBoard event files in the workdir plus log lines
  (primary process only; others just log). clu's writers import tensorflow and
  tensorboard; without them we fall back to the log alone, with a warning.
  For a URI workdir (`gs://...`) the events are written by `EventFileWriter`
  through `showo2_jax.paths` instead (tf.io.gfile cannot be pointed at a GCS
  emulator and would be a second storage layer to configure).
- `metrics.jsonl`: one JSON object per logged step, for scripts and tests that
  should not parse event files (a `paths.Appender`: on object stores the object
  is rewritten every few seconds and at the end).
- `ThroughputReport`: steps/s, tokens/s and ETA every N steps.
- `profiler`: clu's Profile action (a trace of a few steps for TensorBoard).
"""
from __future__ import annotations

import json
import logging
import math
import socket
import struct
import time
from typing import Mapping, Optional

import jax

from showo2_jax import paths

log = logging.getLogger(__name__)


class JsonlWriter:
  """Scalars as JSON lines; the clu MetricWriter methods we use, and no-ops for the rest."""

  def __init__(self, path: str):
    self.path = path
    self._f = paths.Appender(path)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()  # readers (tests, dashboards) follow the file while the run goes on

  def flush(self):
    self._f.flush(force=True)

  def close(self):
    self._f.close()


class EventFileWriter:
  """TensorBoard scalars in an event file under any path `showo2_jax.paths` reaches.

  The TFRecord framing and the Event/Summary protos are TensorBoard's own; the
  file is a `paths.Appender`, so on `gs://` it is rewritten every few seconds.
  A new file is started past `max_bytes` (TensorBoard reads all files of a dir).
  """

  def __init__(self, logdir: str, max_bytes: int = 32 << 20):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
    self._event_pb2 = event_pb2
    self.logdir, self.max_bytes = paths.as_str(logdir), max_bytes
    self._file = None
    self._open()

  def _open(self):
    if self._file is not None:
      self._file.close()
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.showo2"
    self._file = paths.Appender(paths.join(self.logdir, name))
    self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # pylint: disable=import-outside-toplevel
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                     + struct.pack("<I", masked_crc32c(data)))

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=summary_pb2.Summary(value=values)))
    self._file.flush()
    if self._file.size() > self.max_bytes:
      self._open()

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush(force=True)

  def close(self):
    self._file.close()

  def __getattr__(self, name):  # write_images, write_texts, write_hparams, ...
    if name.startswith("write_"):
      return lambda *a, **k: None
    raise AttributeError(name)


class Writers:
  """Fan-out to clu (TensorBoard + log) and the jsonl file."""

  def __init__(self, workdir: str, primary: bool, tensorboard: bool = True):
    self.writers = []
    if not tensorboard:
      self.writers.append(_LogWriter())
    else:
      self._add_clu(workdir, primary)
    if primary:
      self.writers.append(JsonlWriter(paths.join(workdir, "metrics.jsonl")))

  def _add_clu(self, workdir, primary):
    if paths.is_uri(workdir):
      self.writers.append(_LogWriter())
      if primary:
        self.writers.append(EventFileWriter(workdir))
      return
    try:
      from clu import metric_writers  # pylint: disable=import-outside-toplevel
      self.writers.append(metric_writers.create_default_writer(
          workdir, just_logging=not primary, asynchronous=True))
    except ImportError as e:
      log.warning("clu metric writers unavailable (%s); scalars go to the log and metrics.jsonl", e)
      self.writers.append(_LogWriter())

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.flush()
      w.close()


class _LogWriter:
  def write_scalars(self, step, scalars):
    log.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


class ThroughputReport:
  """Every `every_steps`: steps/s, tokens/s (global) and ETA over the last window."""

  def __init__(self, num_steps: int, tokens_per_step: int, every_steps: int, writers: Writers):
    self.num_steps, self.tokens_per_step = num_steps, tokens_per_step
    self.every = max(int(every_steps), 1)
    self.writers = writers
    self._t0: Optional[float] = None
    self._s0 = 0

  def start(self, step: int):
    self._t0, self._s0 = time.perf_counter(), step

  def __call__(self, step: int) -> Optional[dict]:
    if self._t0 is None:
      self.start(step)
      return None
    if step % self.every or step == self._s0:
      return None
    now = time.perf_counter()
    steps_per_sec = (step - self._s0) / max(now - self._t0, 1e-9)
    remaining = (self.num_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
    out = {"steps_per_sec": steps_per_sec, "tokens_per_sec": steps_per_sec * self.tokens_per_step,
           "eta_minutes": remaining / 60.0}
    log.info("step %d/%d: %.3f steps/s, %.0f tokens/s, ETA %.1f min", step, self.num_steps,
             out["steps_per_sec"], out["tokens_per_sec"], out["eta_minutes"])
    self.writers.write_scalars(step, out)
    self._t0, self._s0 = now, step
    return out


def profiler(workdir: str, num_steps: int, first_step: int):
  """A callable(step) that traces `num_steps` steps from `first_step` (or None)."""
  if num_steps <= 0 or jax.process_index() != 0:
    return None
  try:
    from clu import periodic_actions  # pylint: disable=import-outside-toplevel
    return periodic_actions.Profile(logdir=workdir, num_profile_steps=num_steps,
                                    first_profile=first_step, every_steps=None, every_secs=None)
  except ImportError:
    return _JaxProfile(workdir, num_steps, first_step)


class _JaxProfile:
  def __init__(self, workdir, num_steps, first_step):
    self.workdir, self.stop_at, self.start_at = workdir, first_step + num_steps, first_step

  def __call__(self, step):
    if step == self.start_at:
      jax.profiler.start_trace(self.workdir)
    elif step == self.stop_at:
      jax.profiler.stop_trace()
