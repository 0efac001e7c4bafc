"""Incremental detokenization with OpenAI `stop` strings (host side, no JAX).

One `TextStream` per answer. It is fed token ids as they are decoded and
returns the text that is safe to send: not a partial UTF-8 character, not a
possible beginning of a stop string. The concatenated deltas always equal the
final `text`, streamed or not.
"""
from __future__ import annotations

from typing import Optional, Sequence


class TextStream:
  """Token ids -> text deltas, ending at eos, `max_tokens` or the first stop string."""

  def __init__(self, tokenizer, *, eos_id: int, max_tokens: int, stop: Sequence[str] = ()):
    self.tokenizer = tokenizer
    self.eos_id = eos_id
    self.max_tokens = max_tokens
    self.stop = [s for s in stop if s]
    self.ids: list[int] = []
    self.text = ""
    self.done = False
    self.finish_reason: Optional[str] = None  # "stop" or "length"
    self.num_tokens = 0                        # generated tokens, eos included

  def push(self, token: int) -> str:
    """Feeds one generated token; returns the new text (may be '')."""
    if self.done:
      return ""
    self.num_tokens += 1
    if token == self.eos_id:
      return self._finish("stop")
    self.ids.append(int(token))
    if len(self.ids) >= self.max_tokens:
      return self._finish("length")
    return self._emit(final=False)

  def close(self) -> str:
    """The generation ended without eos (e.g. at the server's token cap)."""
    return "" if self.done else self._finish("length")

  def _finish(self, reason: str) -> str:
    self.done = True
    self.finish_reason = reason
    return self._emit(final=True)

  def _emit(self, final: bool) -> str:
    full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
    cuts = [full.find(s) for s in self.stop if s in full]
    if cuts:
      full = full[:min(cuts)]
      self.done, self.finish_reason, final = True, "stop", True
    safe = len(full)
    if not final:
      if full.endswith("\ufffd"):  # an unfinished multi-byte character
        safe = len(full.rstrip("\ufffd"))
      for s in self.stop:  # hold back a suffix that may grow into a stop string
        for k in range(min(len(s) - 1, safe), 0, -1):
          if s.startswith(full[safe - k:safe]):
            safe -= k
            break
    delta = full[len(self.text):safe] if safe > len(self.text) else ""
    self.text += delta
    return delta
