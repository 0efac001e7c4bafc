"""Progress bars for loops that run inside `jax.jit`.

The denoising and decoding loops are `lax.scan` / `lax.while_loop`, so Python
never sees an iteration. Compiled code reports each one to the host with
`jax.debug.callback(tick)`, and `tick` advances the innermost open bar. The
callback is only traced in when the caller asks for progress (a static flag), so
benchmarks and tests run without it.
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
  b = tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr, dynamic_ncols=True)
  _BARS.append(b)
  try:
    yield b
  finally:
    _BARS.remove(b)
    b.close()


def tick(*_):
  """Host side: one iteration done."""
  if _BARS:
    _BARS[-1].update(1)


def report(enabled: bool, dependency) -> None:
  """Device side: call inside a traced loop body; `dependency` orders the call."""
  if enabled:
    jax.debug.callback(tick, dependency)
