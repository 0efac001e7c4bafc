"""Progress bars for loops that run inside `jax.jit`.

The denoising and decoding loops are `lax.scan` / `lax.while_loop`, so Python
never sees an iteration. Compiled code reports each one to the host with
`jax.debug.callback(tick)`, and `tick` advances the innermost open bar. The
callback is only traced in when the caller asks for progress (a static flag), so
benchmarks and tests run without it.

So that the bars tell the truth: a bar says "compiling" until its first
iteration, and its clock (rate, ETA) starts at that first iteration, so the
compilation is not taken for the speed of the loop; bars stay on screen when done.
"""
from __future__ import annotations

import contextlib
import sys

import jax

_BARS = []


@contextlib.contextmanager
def bar(total: int | None, desc: str, enabled: bool = True):
  """Opens a tqdm bar that `tick` advances; yields it (None when disabled)."""
  if not enabled:
    yield None
    return
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  b = tqdm(total=total, desc=desc, unit="it", leave=True, file=sys.stderr, dynamic_ncols=True)
  b.set_postfix_str("compiling")
  b.started = False
  _BARS.append(b)
  try:
    yield b
  finally:
    _BARS.remove(b)
    b.close()


def tick(*_):
  """Host side: one iteration done. The first one restarts the bar's clock, so
  the compilation before it does not count towards the rate and the ETA."""
  if not _BARS:
    return
  b = _BARS[-1]
  if not getattr(b, "started", True):
    b.started = True
    b.set_postfix_str("", refresh=False)
    b.start_t = b.last_print_t = b._time()  # pylint: disable=protected-access
    b.last_print_n = b.n
  b.update(1)


def advance_to(b, n: int) -> None:
  """Moves bar `b` (from `bar`; None is a no-op) forward to `n`: a decode that
  stopped early at eos finishes its share of the total."""
  if b is not None and b.n < n:
    b.update(n - b.n)


def report(enabled: bool, dependency) -> None:
  """Device side: call inside a traced loop body; `dependency` orders the call."""
  if enabled:
    jax.debug.callback(tick, dependency)
