"""The Show-o2 text tokenizer: Qwen2.5 plus the four tokens Show-o2 adds (spec 4.1).

Show-o2 never applies a chat template and never lets the tokenizer add special
tokens; every sequence layout is assembled from ids (see `sequences.py`). What
this module guarantees is that the ids are the ones the released checkpoints
were trained with: the four Show-o2 tokens are added in the original order, so
they get the same new ids (151665..151668 for Qwen2.5), and every other id is
looked up by its string, never hard-coded.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import tokenizers

from showo2_jax import paths

# Added by Show-o2, in this order: the order fixes their ids.
PAD_TOKEN = "[PAD]"
SHOWO_ADDED_TOKENS = ("<image>", "<|vid_start|>", "<|vid_end|>")

# Role -> string. Qwen's own strings must already be in the base tokenizer.
QWEN_TOKEN_STRINGS = {
    "bos": "<|im_start|>",
    "eos": "<|im_end|>",
    "boi": "<|vision_start|>",
    "eoi": "<|vision_end|>",
    "img_pad": "<|image_pad|>",
    "vid_pad": "<|video_pad|>",
}
SHOWO_TOKEN_STRINGS = {
    "pad": PAD_TOKEN,
    "img": "<image>",
    "bov": "<|vid_start|>",
    "eov": "<|vid_end|>",
}
TOKEN_STRINGS = {**QWEN_TOKEN_STRINGS, **SHOWO_TOKEN_STRINGS}


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids of the tokens that sequence layouts are built from."""
  bos: int      # <|im_start|>: starts every sequence and every chat turn
  eos: int      # <|im_end|>: ends a sequence / an answer; decoding stops here
  boi: int      # <|vision_start|>: opens a visual block (images and video)
  eoi: int      # <|vision_end|>: closes it
  img_pad: int  # <|image_pad|>: placeholder at every visual position
  vid_pad: int  # <|video_pad|>: in the vocabulary, unused by the layouts
  pad: int      # [PAD]: right padding
  img: int      # <image>: LLaVA marker replaced by a visual block
  bov: int      # <|vid_start|>: added by Show-o2, unused by the layouts
  eov: int      # <|vid_end|>

  @classmethod
  def from_tokenizer(cls, tokenizer) -> SpecialTokens:
    """Looks every id up by string; fails naming the strings that are missing."""
    vocab = tokenizer.get_vocab()
    missing = [s for s in TOKEN_STRINGS.values() if s not in vocab]
    if missing:
      raise ValueError(
          f"tokenizer lacks the special tokens {missing}; a Qwen2.5 tokenizer with "
          "the Show-o2 tokens added (load_tokenizer) is required")
    return cls(**{role: vocab[s] for role, s in TOKEN_STRINGS.items()})

  def as_showo_dict(self) -> dict[str, int]:
    """The original's `showo_token_ids` dict (keys like 'bos_id'), plus 'pad_token_id'."""
    return {f"{k}_id" if k != "pad" else "pad_token_id": v
            for k, v in dataclasses.asdict(self).items()}


def add_showo_tokens(tokenizer):
  """Adds Show-o2's pad and three tokens exactly as the original, in place.

  Idempotent: a tokenizer saved after this step keeps its ids.
  """
  tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
  for token in SHOWO_ADDED_TOKENS:  # one call each, like the original
    tokenizer.add_tokens(token)
  return tokenizer


def load_tokenizer(path: str | os.PathLike):
  """Loads a local Qwen2.5(-Instruct) tokenizer dir and adds Show-o2's tokens.

  Returns (tokenizer, SpecialTokens). No network: `path` must be a local
  directory with tokenizer.json / tokenizer_config.json.
  """
  import transformers  # pylint: disable=g-import-not-at-top  (slow; workers never need it)
  path = os.fspath(path)
  if paths.is_uri(path):   # transformers reads local folders only: a temporary copy
    if not paths.isdir(path):
      raise FileNotFoundError(f"tokenizer directory not found: {path!r}")
    with paths.local_copy(path) as local:
      tokenizer, special = load_tokenizer(local)
    tokenizer.name_or_path = path
    return tokenizer, special
  if not paths.isdir(path):
    raise FileNotFoundError(
        f"tokenizer directory not found: {path!r} (expected a local copy of the "
        "Qwen2.5-Instruct tokenizer, e.g. from `huggingface-cli download`)")
  tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  vocab = tokenizer.get_vocab()
  missing = [s for s in QWEN_TOKEN_STRINGS.values() if s not in vocab]
  if missing:
    raise ValueError(
        f"tokenizer at {path!r} lacks the Qwen2.5 special tokens {missing}; "
        "is it a Qwen2.5 tokenizer?")
  add_showo_tokens(tokenizer)
  special = SpecialTokens.from_tokenizer(tokenizer)
  if tokenizer.eos_token != QWEN_TOKEN_STRINGS["eos"]:
    # The base (non-Instruct) Qwen2.5 ends with <|endoftext|>; Show-o2 layouts
    # always use <|im_end|>, as the released (Instruct-based) models do.
    logging.warning("tokenizer eos_token is %r; Show-o2 layouts use %r",
                    tokenizer.eos_token, QWEN_TOKEN_STRINGS["eos"])
  return tokenizer, special


def fast_encoder(tokenizer):
  """The Rust `tokenizers.Tokenizer` behind an HF fast tokenizer (or the argument).

  It gives the same ids as the HF wrapper, and Grain worker processes can
  unpickle it without importing transformers, which halves their start-up.
  """
  return getattr(tokenizer, "backend_tokenizer", tokenizer)


def encode(tokenizer, text: str, max_length: int | None = None) -> list[int]:
  """Token ids of `text` as every Show-o2 dataset computes them.

  `tokenizer`: an HF tokenizer or its `fast_encoder`. No special tokens are
  added; special-token strings inside `text` (e.g. '<|im_end|>') become their
  single ids. `max_length` truncates from the right, like the original's
  `truncation=True, max_length=...`.
  """
  if isinstance(tokenizer, tokenizers.Tokenizer):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
  else:
    ids = tokenizer(text, add_special_tokens=False).input_ids
  return list(ids if max_length is None else ids[:max_length])
