"""Token layouts of every Show-o2 sequence (spec section 4), host-side, in numpy.

Every builder returns a "row": a dict of numpy arrays
  text_tokens        (L,)   int32  ids, `<|image_pad|>` at visual positions
  text_labels        (L,)   int32  NTP targets, -100 = ignored
  modality_positions (M, 2) int32  (offset, length) per visual block; the length
                                   counts the time slot at `offset`; (0, 0) = empty
  image_masks        (L,)   int32  1 at `<|image_pad|>` positions
Training rows have a fixed length L = max_seq_len so batches stack without
recompiling; inference prompts can be right-padded to a multiple (a bucket).
`num_visual_tokens` is always N + 1 (patches plus the time slot).

Where we deliberately differ from a bug of an original *script* (spec 10):
- LLaVA rows whose visual block would be cut by the max_seq_len truncation
  raise `LayoutError` (the pipeline skips and counts them); the original kept
  a modality block pointing past the sequence end (10.14).
- LLaVA rows expand every `<image>` marker into its own visual block (the
  LLaVA-OneVision multi-image rows: one block per image, in marker order), up
  to `max_num_images` slots (more raise `LayoutError`). The original expanded
  only the first marker of each turn, which broke its collate (fixed M) for a
  second image anyway ("only one image per sample is supported").
- Understanding prompts default to the *training* layout (offset La+1, the
  stage-2c template); `parity_mode=True` reproduces inference_mmu.py's
  off-by-one block (La+2) and its two template differences (10.2, 10.3).
- Mixed-modality history is kept as ids, not decoded to text and re-tokenized
  each round, and the CFG null prompt is always `[bos, boi, visual, eoi]`
  instead of the original's string surgery (10.15). The visual block of the
  null row is identical; only junk text after it (which causal attention
  makes irrelevant) is gone.
Quirks reproduced on purpose (they shape what released weights expect):
caption cleaning replaces its phrases anywhere in the caption, not only at the
start; interleaved labels contain `<|image_pad|>` at visual positions (10.11);
LLaVA truncation of sources/targets at 512 tokens can cut the answer's eos.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from showo2_jax.data import tokenizer as tokenizer_lib
from showo2_jax.data.tokenizer import SpecialTokens

IGNORE_INDEX = -100
IMAGE_MARKER = tokenizer_lib.SHOWO_TOKEN_STRINGS["img"]  # "<image>"
DEFAULT_SYSTEM_PROMPT = "system\nYou are a helpful assistant.<|im_end|>"
ROLE_USER = "\n<|im_start|>user\n"
ROLE_ASSISTANT = "\n<|im_start|>assistant\n"
SYSTEM_PROMPT_MAX_LEN = 100
MMU_SOURCE_MAX_LEN = 512
MMU_TARGET_MAX_LEN = 512
VIST_FLAG = "Mixed-modality generation (VIST)."
# Applied in this order, each with str.replace over the whole caption (as the
# original's `remove_prefix`; "This is " appears twice there too).
CAPTION_PREFIXES = (
    "The image features ", "The image presents ", "The image you've sent is, ",
    "In the center of the image, ", "The image showcases ", "The image is ",
    "The image captures ", "In the given image ", "The image portrays ", "In the image, ",
    "In this image, we see ", "The image depicts ", "This is ", "In this image, ",
    "This image captures ", "This image showcases ", "This suggests ",
    "In the photo, we see ", "This is ", "This image is ", "In the photo, we have ",
    "The photo features ", "The photo depicts ", "The photo appears to be ")

Row = dict  # str -> np.ndarray, see the module docstring


class LayoutError(ValueError):
  """A sample that cannot be laid out within the fixed length; skip it."""


# ----------------------------------------------------------------------------- helpers

def visual_block(special: SpecialTokens, num_visual_tokens: int) -> list[int]:
  """`[boi] + [img_pad] * (N+1) + [eoi]`; the first img_pad holds the time token."""
  return [special.boi] + [special.img_pad] * num_visual_tokens + [special.eoi]


def make_row(tokens: Sequence[int], labels: Sequence[int] | None, positions, special: SpecialTokens,
             length: int | None = None) -> Row:
  """Right-pads (or truncates) to `length` and derives `image_masks`."""
  tokens, labels = list(tokens), list(labels if labels is not None else [IGNORE_INDEX] * len(tokens))
  if length is not None:
    tokens = (tokens + [special.pad] * (length - len(tokens)))[:length]
    labels = (labels + [IGNORE_INDEX] * (length - len(labels)))[:length]
  text_tokens = np.asarray(tokens, np.int32)
  return {
      "text_tokens": text_tokens,
      "text_labels": np.asarray(labels, np.int32),
      "modality_positions": np.asarray(positions, np.int32).reshape(-1, 2),
      "image_masks": (text_tokens == special.img_pad).astype(np.int32),
  }


def bucket_length(length: int, multiple: int | None) -> int:
  """`length` rounded up to a multiple (None: unchanged); bounds recompiles."""
  return length if not multiple else -(-length // multiple) * multiple


def stack_rows(rows: Sequence[Row]) -> Row:
  """Stacks rows of equal shapes into a batch (adds a leading axis)."""
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def remove_prefix(caption: str) -> str:
  """The original's boilerplate removal (every occurrence, in a fixed order)."""
  for phrase in CAPTION_PREFIXES:
    caption = caption.replace(phrase, "")
  return caption


def clean_caption(caption: str, strip_boilerplate: bool = True) -> str:
  """Newlines removed; boilerplate openers too for generation captions (4.2)."""
  caption = caption.replace("\n", "")
  return remove_prefix(caption) if strip_boilerplate else caption


# ----------------------------------------------------------------------------- text-to-image

def t2i_max_text_len(max_seq_len: int, num_visual_tokens: int) -> int:
  """Prompt tokens that fit: the 4 are bos, boi, eoi, eos (spec 1.7)."""
  max_text_len = max_seq_len - num_visual_tokens - 4
  if max_text_len < 0:
    raise ValueError(f"max_seq_len {max_seq_len} cannot hold {num_visual_tokens} visual tokens")
  return max_text_len


def t2i_row(prompt_ids: Sequence[int], special: SpecialTokens, *, num_visual_tokens: int,
            max_seq_len: int) -> Row:
  """`[bos] prompt [boi] visual [eoi] [eos] pads`; no NTP labels (4.2).

  Used for training rows, inference prompts and (with no prompt) the CFG null
  row, which equals a training row whose caption was dropped.
  """
  ids = list(prompt_ids)[:t2i_max_text_len(max_seq_len, num_visual_tokens)]
  tokens = [special.bos] + ids + visual_block(special, num_visual_tokens) + [special.eos]
  return make_row(tokens, None, [(len(ids) + 2, num_visual_tokens)], special, max_seq_len)


def t2i_null_row(special: SpecialTokens, *, num_visual_tokens: int, max_seq_len: int) -> Row:
  """The classifier-free-guidance null prompt (empty caption)."""
  return t2i_row([], special, num_visual_tokens=num_visual_tokens, max_seq_len=max_seq_len)


def t2i_prompt_rows(prompt_ids: Sequence[Sequence[int]], special: SpecialTokens, *,
                    context: Sequence[int] = (), cfg: bool = True) -> list[list[int]]:
  """The unpadded generation prefixes of a batch: `[bos] context ids [boi]` per prompt,
  then (with `cfg`) as many null rows `[bos] context [boi]` (CFG concatenates cond then
  null, as `prepare_gen_input`). The visual block follows each row's boi; padding and
  alignment are the sampler's (sample/prefix.align). `context`: a leading visual block
  (image-to-image / video conditioning), e.g. `visual_block(special, n)`."""
  head = [special.bos] + list(context)
  rows = [head + list(ids) + [special.boi] for ids in prompt_ids]
  if cfg:
    rows += [head + [special.boi]] * len(prompt_ids)
  return rows


# ----------------------------------------------------------------------------- captioning

def captioning_row(caption_ids: Sequence[int], special: SpecialTokens, *, num_visual_tokens: int,
                   max_seq_len: int) -> Row:
  """Stage-1 captioning: `[bos boi] visual [eoi] caption [eos] pads` (4.3).

  Labels are the tokens with the visual positions ignored; after the shift
  this trains boi from bos, eoi from the last patch, the caption and eos.
  """
  ids = list(caption_ids)[:t2i_max_text_len(max_seq_len, num_visual_tokens)]
  head = [special.bos, special.boi]
  tokens = head + [special.img_pad] * num_visual_tokens + [special.eoi] + ids + [special.eos]
  labels = head + [IGNORE_INDEX] * num_visual_tokens + [special.eoi] + ids + [special.eos]
  return make_row(tokens, labels, [(2, num_visual_tokens)], special, max_seq_len)


# ----------------------------------------------------------------------------- LLaVA (stage 2)

@dataclasses.dataclass(frozen=True)
class ChatIds:
  """Token ids of the stage-2c chat strings, tokenized once."""
  system: tuple[int, ...]
  user: tuple[int, ...]
  assistant: tuple[int, ...]

  @classmethod
  def build(cls, tokenizer, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
            system_max_len: int | None = SYSTEM_PROMPT_MAX_LEN) -> ChatIds:
    return cls(tuple(tokenizer_lib.encode(tokenizer, system_prompt, system_max_len)),
               tuple(tokenizer_lib.encode(tokenizer, ROLE_USER)),
               tuple(tokenizer_lib.encode(tokenizer, ROLE_ASSISTANT)))


def llava_turns(conversations: Sequence[dict], stage: str) -> tuple[list[str], list[str]]:
  """(sources, targets) strings of a LLaVA conversation, as MMUDataset builds them.

  A human turn ending in "\\n<image>" is rewritten to start with "<image>\\n";
  in 'pre-training*' stages a human turn with an image becomes just "<image>"
  (the question is dropped). Targets end with the eos string.
  """
  sources, targets = [], []
  for turn in conversations:
    value = turn["value"]
    if turn["from"] == "human":
      if value.endswith("\n<image>"):
        value = "<image>\n" + value[:-len("\n<image>")]
      if stage.startswith("pre-training") and "<image>" in value:
        value = "<image>"
      sources.append(value)
    else:
      targets.append(value + tokenizer_lib.QWEN_TOKEN_STRINGS["eos"])
  return sources, targets


def _chat_sequence(source_ids, target_ids, special, chat, num_visual_tokens, max_num_images=1):
  """Unpadded tokens, labels, positions of a chat (MMUDataset's format).

  Every `<image>` id becomes `[boi] img_pad * N [eoi]` with one (offset, N)
  slot, in order of appearance, at most `max_num_images` of them.
  """
  tokens, labels, positions = [special.bos], [IGNORE_INDEX], []
  for turn, (src, tgt) in enumerate(zip(source_ids, target_ids)):
    src = list(src)
    if chat is not None:
      src = list(chat.user) + src + [special.eos] + list(chat.assistant)
      if turn == 0:
        src = list(chat.system) + src
    expanded = []
    for tok in src:
      if tok != special.img:
        expanded.append(tok)
        continue
      if len(positions) == max_num_images:
        raise LayoutError(f"more than {max_num_images} <image> in one sample "
                          f"(max_num_images={max_num_images})")
      # +1 skips the boi: the offset is the first img_pad (the time slot).
      positions.append((len(tokens) + len(expanded) + 1, num_visual_tokens))
      expanded += visual_block(special, num_visual_tokens)
    tokens += expanded + list(tgt)
    labels += [IGNORE_INDEX] * len(expanded) + list(tgt)
  return tokens, labels, positions


def mmu_row(source_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]],
            special: SpecialTokens, *, chat: ChatIds | None, num_visual_tokens: int,
            max_seq_len: int, max_num_images: int = 1) -> Row:
  """A stage-2 understanding row from tokenized turns (4.3).

  `chat=None` is the 'pre-training' format (no system prompt, no roles);
  otherwise the 'tuning' format. Only answers (with their eos) are labelled.
  One slot per `<image>` (multi-image rows), padded with empty (0, 0) slots to
  exactly `max_num_images` (M), so rows stack; text-only samples are all empty.
  """
  tokens, labels, positions = _chat_sequence(source_ids, target_ids, special, chat,
                                              num_visual_tokens, max_num_images)
  for offset, _ in positions:
    if offset + num_visual_tokens > max_seq_len:
      raise LayoutError(f"visual block at {offset} does not fit in {max_seq_len} tokens")
  positions = positions + [(0, 0)] * (max_num_images - len(positions))
  return make_row(tokens, labels, positions, special, max_seq_len)


def llava_row(tokenizer, conversations: Sequence[dict], special: SpecialTokens, *, stage: str,
              num_visual_tokens: int, max_seq_len: int, chat: ChatIds | None = None,
              source_max_len: int = MMU_SOURCE_MAX_LEN,
              target_max_len: int = MMU_TARGET_MAX_LEN, max_num_images: int = 1) -> Row:
  """A LLaVA json sample -> row. `chat` is required unless stage is 'pre-training*'.

  Multi-image samples (LLaVA-OneVision: several `<image>` in the conversation,
  `image` a list of files) need `max_num_images` >= their image count.
  """
  pretraining = stage.startswith("pre-training")
  if not pretraining and chat is None:
    raise ValueError(f"stage {stage!r} needs the chat ids (ChatIds.build(tokenizer))")
  sources, targets = llava_turns(conversations, stage)
  return mmu_row([tokenizer_lib.encode(tokenizer, s, source_max_len) for s in sources],
                 [tokenizer_lib.encode(tokenizer, t, target_max_len) for t in targets],
                 special, chat=None if pretraining else chat,
                 num_visual_tokens=num_visual_tokens, max_seq_len=max_seq_len,
                 max_num_images=max_num_images)


# ----------------------------------------------------------------------------- image editing

def edit_max_text_len(max_seq_len: int, num_visual_tokens: int) -> int:
  """Instruction tokens that fit: two blocks (N+1 + boi/eoi each), bos, eos."""
  return max_seq_len - 2 * (num_visual_tokens + 2) - 2


def edit_row(instruction_ids: Sequence[int], special: SpecialTokens, *, num_visual_tokens: int,
             max_seq_len: int) -> Row:
  """Image editing: `[bos] [boi] source [eoi] instruction [boi] target [eoi] [eos] pads`.

  Two slots: the source image, a *clean* context block (its `image_masks` are 0,
  which `train.noising` reads as "clean context: t = 1, no flow loss"), and
  the target, generated by the flow head. No NTP labels. An empty instruction
  is the classifier-free-guidance null row (source kept, instruction dropped),
  as `Pipeline.edit` samples it.
  """
  ids = list(instruction_ids)[:edit_max_text_len(max_seq_len, num_visual_tokens)]
  block = visual_block(special, num_visual_tokens)
  tokens = [special.bos] + block + ids + block + [special.eos]
  target = 1 + len(block) + len(ids) + 1
  row = make_row(tokens, None, [(2, num_visual_tokens), (target, num_visual_tokens)], special,
                 max_seq_len)
  row["image_masks"][2:2 + num_visual_tokens] = 0
  return row


# ----------------------------------------------------------------------------- understanding inference

def with_image_markers(question: str, num_images: int) -> str:
  """The user turn for a question about `num_images` images (LLaVA-OneVision layout).

  A question that already holds `<image>` markers must hold exactly one per
  image (they say where each image goes); otherwise every image comes first,
  each on its own line, then the question (`<image>\n<image>\nQ`), as the
  training data's rewrite puts a trailing image first.
  """
  marks = question.count(IMAGE_MARKER)
  if marks == 0:
    return (IMAGE_MARKER + "\n") * num_images + question
  if marks != num_images:
    raise ValueError(f"the question has {marks} <image> markers but {num_images} images were given")
  return question


def _understanding_layout(tokenizer, question, special, chat, num_visual_tokens, parity_mode,
                          parity_block_length, num_images=1):
  """tokens, placement [(offset, length)], attention blocks [(offset, length)]."""
  if parity_mode and num_images != 1:
    raise ValueError("parity_mode reproduces inference_mmu.py, which takes one image")
  if parity_mode:
    # inference_mmu.py: [bos sys user] boi [time V] eoi question assistant, no "\n"
    # after eoi, no eos before the assistant header, the block shifted by one.
    head = [special.bos] + list(chat.system) + list(chat.user)
    tokens = (head + visual_block(special, num_visual_tokens)
              + tokenizer_lib.encode(tokenizer, question) + list(chat.assistant))
    return tokens, [(len(head) + 1, num_visual_tokens)], [(len(head) + 2, parity_block_length)]
  source = tokenizer_lib.encode(tokenizer, with_image_markers(question, num_images),
                                MMU_SOURCE_MAX_LEN)
  tokens, _, positions = _chat_sequence([source], [[]], special, chat, num_visual_tokens,
                                        num_images)
  if len(positions) != num_images:  # markers cut by the 512-token source truncation
    raise LayoutError(f"the question is too long: only {len(positions)} of {num_images} images "
                      f"fit in the first {MMU_SOURCE_MAX_LEN} tokens")
  return tokens, positions, positions


def understanding_prompt(tokenizer, question: str, special: SpecialTokens, chat: ChatIds, *,
                         num_visual_tokens: int, parity_mode: bool = False,
                         pad_to_multiple: int | None = None, num_images: int = 1) -> Row:
  """An image question prompt for greedy answering (4.4).

  Returns a row plus
    prompt_length                 int: real tokens; generation starts there
    attention_modality_positions  (K, 2): the bidirectional blocks for the mask
  `modality_positions` (K, 2) says where each image's visual tokens go (time
  slot at offset); K = num_images, one block per image (`with_image_markers`).
  Default: the stage-2c training template, both positions equal (La+1, N+1).
  `parity_mode`: inference_mmu.py exactly (one image); the mask block is (La+2, N+1).
  """
  tokens, place, block = _understanding_layout(tokenizer, question, special, chat,
                                               num_visual_tokens, parity_mode, num_visual_tokens,
                                               num_images)
  return _prompt_row(tokens, place, block, special, pad_to_multiple)


def conversation_prompt(tokenizer, turns: Sequence[tuple[str, str]], special: SpecialTokens,
                        chat: ChatIds, *, num_visual_tokens: int, num_images: int,
                        pad_to_multiple: int | None = None) -> Row:
  """A multi-turn chat prompt (the server's messages) for answering the last turn.

  turns: (user text with one `<image>` per image, earlier assistant answer);
  the last turn's answer is '' (the model writes it). Earlier answers end with
  the eos string, as in training rows. Same fields as `understanding_prompt`.
  """
  eos = tokenizer_lib.QWEN_TOKEN_STRINGS["eos"]
  sources = [tokenizer_lib.encode(tokenizer, u, MMU_SOURCE_MAX_LEN) for u, _ in turns]
  targets = [tokenizer_lib.encode(tokenizer, a + eos, MMU_TARGET_MAX_LEN) for _, a in turns[:-1]]
  tokens, _, positions = _chat_sequence(sources, targets + [[]], special, chat, num_visual_tokens,
                                        max(num_images, 1))
  if len(positions) != num_images:
    raise LayoutError(f"{num_images} images given but {len(positions)} fit in the messages "
                      f"(each turn keeps its first {MMU_SOURCE_MAX_LEN} tokens)")
  return _prompt_row(tokens, positions, positions, special, pad_to_multiple)


def video_understanding_prompt(tokenizer, question: str, special: SpecialTokens, chat: ChatIds, *,
                               num_frames: int, tokens_per_frame: int = 196,
                               parity_mode: bool = False, parity_block_length: int | None = None,
                               pad_to_multiple: int | None = None) -> Row:
  """A video question prompt (4.5): one time slot, then num_frames * 196 tokens.

  Same fields as `understanding_prompt`; the visual block (boi/eoi, not the
  vid tokens) has length F * tokens_per_frame + 1. In parity mode the mask
  block is (La+2, parity_block_length) with the *image* length (730 at 432 px),
  so most video tokens stay causal, as in inference_mmu_vid.py; by default
  the whole video block is bidirectional.
  """
  if parity_mode and parity_block_length is None:
    raise ValueError("parity_mode needs parity_block_length (the image block length, e.g. 730)")
  n = num_frames * tokens_per_frame + 1
  tokens, place, block = _understanding_layout(tokenizer, question, special, chat, n, parity_mode,
                                               parity_block_length)
  return _prompt_row(tokens, place, block, special, pad_to_multiple)


def _prompt_row(tokens, place, block, special, pad_to_multiple) -> Row:
  row = make_row(tokens, None, list(place) or [(0, 0)], special,
                 bucket_length(len(tokens), pad_to_multiple))
  row["attention_modality_positions"] = np.asarray(list(block) or [(0, 0)], np.int32).reshape(-1, 2)
  row["prompt_length"] = len(tokens)
  return row


# ----------------------------------------------------------------------------- interleaved (VIST)

def interleaved_max_text_len(max_seq_len: int, flag_len: int, num_visual_tokens: int,
                             max_num_images: int) -> int:
  """Per-caption token budget: N+3 counts the block with boi/eoi; 2 = bos, eos."""
  return (max_seq_len - flag_len - (num_visual_tokens + 2) * max_num_images - 2) // max_num_images


def interleaved_row(caption_ids: Sequence[Sequence[int]], special: SpecialTokens, *,
                    flag_ids: Sequence[int], num_visual_tokens: int, max_seq_len: int,
                    max_num_images: int = 4, label_image_pads: bool = True) -> Row:
  """`[bos] flag cap1 [boi] v1 [eoi] cap2 [boi] v2 [eoi] ... [eos] pads` (4.6).

  One caption per image, caption first. Labels equal the tokens (including
  `<|image_pad|>` at visual positions, the original's quirk, unless
  `label_image_pads=False`), except the flag and pads. M = max_num_images;
  missing images get (0, 0).
  """
  if not 0 < len(caption_ids) <= max_num_images:
    raise LayoutError(f"need 1..{max_num_images} images, got {len(caption_ids)}")
  budget = interleaved_max_text_len(max_seq_len, len(flag_ids), num_visual_tokens, max_num_images)
  tokens = [special.bos] + list(flag_ids)
  labels = [special.bos] + [IGNORE_INDEX] * len(flag_ids)
  positions = []
  block = visual_block(special, num_visual_tokens)
  block_labels = block if label_image_pads else (
      [special.boi] + [IGNORE_INDEX] * num_visual_tokens + [special.eoi])
  for ids in caption_ids:
    ids = list(ids)[:budget]
    tokens += ids
    labels += ids
    positions.append((len(tokens) + 1, num_visual_tokens))
    tokens += block
    labels += block_labels
  tokens.append(special.eos)
  labels.append(special.eos)
  positions += [(0, 0)] * (max_num_images - len(positions))
  return make_row(tokens, labels, positions, special, max_seq_len)


def vist_window_start(num_images: int, max_num_images: int, rng: np.random.Generator) -> int:
  """Start of a random window of `max_num_images` consecutive images.

  Every window is possible; the original's `randint(0, n - 4 - 1)` never picks
  the last one (10.14), which we do not reproduce.
  """
  if num_images <= max_num_images:
    return 0
  return int(rng.integers(0, num_images - max_num_images + 1))


# ----------------------------------------------------------------------------- mixed-modality inference

def mixed_text_prompt(history_ids: Sequence[int], history_positions, special: SpecialTokens, *,
                      pad_to_multiple: int | None = None) -> Row:
  """`[bos] history` for the next text round (4.7 step 1-2).

  `history_ids` excludes the bos; earlier images sit in it as visual blocks at
  `history_positions` (a list of (offset, length), possibly empty).
  """
  tokens = [special.bos] + list(history_ids)
  row = make_row(tokens, None, list(history_positions) or [(0, 0)], special,
                 bucket_length(len(tokens), pad_to_multiple))
  row["prompt_length"] = len(tokens)
  return row


def mixed_image_prompt(history_ids: Sequence[int], history_positions, special: SpecialTokens, *,
                       num_visual_tokens: int, pad_multiple: int = 128) -> tuple[Row, Row]:
  """(cond, null) rows to generate the next image of a story (4.7 step 3).

  `history_ids`: the story so far without the leading bos and without the
  trailing `<|vision_start|>` the text round stopped on. Cond is
  `[bos] history [boi] visual [eoi]`, its positions the history's plus the new
  block; null is `[bos boi] visual [eoi]` with every slot at (2, N+1) (they
  overlap as in the original; the last slot wins). Both are right-padded to a
  common multiple of `pad_multiple`. `cond["history_ids"]` and
  `cond["modality_positions"]` are the history for the next round.
  """
  block = visual_block(special, num_visual_tokens)
  cond_tokens = [special.bos] + list(history_ids) + block
  positions = list(history_positions) + [(len(history_ids) + 2, num_visual_tokens)]
  null_tokens = [special.bos] + block
  length = bucket_length(max(len(cond_tokens), len(null_tokens)), pad_multiple)
  cond = make_row(cond_tokens, None, positions, special, length)
  cond["history_ids"] = np.asarray(cond_tokens[1:], np.int32)
  null = make_row(null_tokens, None, [(2, num_visual_tokens)] * len(positions), special, length)
  return cond, null
