"""A real tokenizer for the shapes world, trained with `tokenizers` (no download).

Byte-level BPE like Qwen2.5's, trained on every sentence the world can say
(`world.corpus()`) plus Show-o2's chat strings (system prompt, role headers),
then Qwen2.5's 22 added tokens in Qwen's order, saved as a normal Hugging Face
tokenizer directory. `data.tokenizer.load_tokenizer(dir)` adds Show-o2's four
tokens exactly as it does to Qwen2.5, so every layout is built the same way as
for the released models. With enough merges every world word is one token, so
captions are 4-8 tokens and a LLaVA row fits the tiny sequence length.
"""
from __future__ import annotations

import os

from showo2_jax.data import sequences
from showo2_jax.data.testing import NUM_QWEN_SPECIAL, QWEN_ADDED_TOKENS
from showo2_jax.shapes import world

# 256 byte symbols + merges; every world word and chat string ends up whole.
BPE_VOCAB_SIZE = 400


def training_corpus() -> list[str]:
  chat = [sequences.DEFAULT_SYSTEM_PROMPT.replace("<|im_end|>", ""),
          sequences.ROLE_USER, sequences.ROLE_ASSISTANT]
  return list(world.corpus()) + chat * 8


def build_tokenizer(out_dir: str) -> str:
  """Trains and writes the tokenizer to `out_dir` (deterministic); returns it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(training_corpus(), trainer)
  tok.add_special_tokens(list(QWEN_ADDED_TOKENS[:NUM_QWEN_SPECIAL]))
  tok.add_tokens(list(QWEN_ADDED_TOKENS[NUM_QWEN_SPECIAL:]))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      model_max_length=1 << 20)
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return out_dir
