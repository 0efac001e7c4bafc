"""What `showo2-jax train` shows on the terminal while a phase runs.

One tqdm bar per training phase, kept on screen when done (`leave=True`), and
the losses of every `train.log_every`-th step printed above it:

    [stage1] compiling the train step (first step)...
    [stage1] compiled and ran step 1 in 21.4 s
    [stage1] step   50/600  loss 1.2345  ntp_loss 3.1  flow_loss 0.61  lr 0.001
    stage1: 100%|██████████| 600/600 [01:10<00:00, 8.5 step/s, loss=0.7]

The bar starts after the first step has been compiled and run, so its rate and
ETA are those of training, not of compilation. Log records emitted while the
bar is open are written through tqdm so they do not tear it. Only process 0
prints; the other hosts of a pod stay quiet.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Mapping, Optional

# Scalars worth a column on the console, in this order; the rest go to
# TensorBoard and metrics.jsonl only.
SHOWN = ("loss", "ntp_loss", "flow_loss", "rec_loss", "mse_loss", "kl_loss", "distill_clean",
         "distill_noised", "grad_norm")


def format_scalars(scalars: Mapping[str, float]) -> str:
  parts = [f"{k} {scalars[k]:.4g}" for k in SHOWN if k in scalars]
  lrs = [f"{k} {v:.3g}" for k, v in scalars.items() if k == "lr" or k.startswith("lr_")
         or k.endswith("_lr")]
  return "  ".join(parts + lrs)


class Console:
  """Progress of one phase. `enabled=False` prints nothing (other hosts, tests)."""

  def __init__(self, name: str, enabled: bool = True, stream=None):
    self.name = name
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self._bar = None
    self._t_compile: Optional[float] = None
    self._redirect = contextlib.ExitStack()

  def write(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def compiling(self, step: int, num_steps: int) -> None:
    self._t_compile = time.perf_counter()
    self.write(f"[{self.name}] compiling the train step (first step, {step} -> {step + 1} of "
               f"{num_steps})...")

  def compiled(self, step: int, num_steps: int) -> None:
    """The first step is done: say how long it took and open the bar at `step`."""
    took = time.perf_counter() - (self._t_compile or time.perf_counter())
    self.write(f"[{self.name}] compiled and ran step {step} in {took:.1f} s")
    if not self.enabled:
      return
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    from tqdm.contrib.logging import logging_redirect_tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm(total=num_steps, initial=step, desc=self.name, unit="step", leave=True,
                     file=self.stream, dynamic_ncols=True, smoothing=0.1)
    self._redirect.enter_context(logging_redirect_tqdm())

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def scalars(self, step: int, num_steps: int, scalars: Mapping[str, float]) -> None:
    width = len(str(num_steps))
    self.write(f"[{self.name}] step {step:>{width}}/{num_steps}  {format_scalars(scalars)}")
    if self._bar is not None and "loss" in scalars:
      self._bar.set_postfix(loss=f"{scalars['loss']:.4g}", refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self._redirect.close()
