"""Tokenizer loading: Show-o2 tokens added like the original, ids looked up by string."""
import json
import os

import pytest

from showo2_jax.data import testing, tokenizer


def test_showo_tokens_are_appended_in_the_original_order(tok, special):
  # The base tokenizer ends with Qwen's 22 added tokens; Show-o2 appends four.
  base = testing.BPE_VOCAB_SIZE + len(testing.QWEN_ADDED_TOKENS)
  assert len(tok) == base + 4
  assert (special.pad, special.img, special.bov, special.eov) == (base, base + 1, base + 2, base + 3)
  assert tok.pad_token == "[PAD]" and tok.pad_token_id == special.pad


def test_special_ids_are_looked_up_by_string(tok, special):
  vocab = tok.get_vocab()
  for role, string in tokenizer.TOKEN_STRINGS.items():
    assert getattr(special, role) == vocab[string]
  # Same relative positions as in Qwen2.5 (151643 + k).
  first = testing.BPE_VOCAB_SIZE
  assert (special.bos, special.eos, special.boi, special.eoi, special.img_pad, special.vid_pad) == (
      first + 1, first + 2, first + 9, first + 10, first + 12, first + 13)
  assert special.as_showo_dict()["pad_token_id"] == special.pad
  assert special.as_showo_dict()["img_pad_id"] == special.img_pad


def test_special_strings_in_text_become_single_ids(tok, special):
  ids = tokenizer.encode(tok, "\n<|im_start|>user\n")
  assert ids[1] == special.bos and ids[0] == ids[-1]  # "\n" on both sides
  ids = tokenizer.encode(tok, "hello<|im_end|><image>")
  assert ids[-2:] == [special.eos, special.img]
  assert tokenizer.encode(tok, "hello world", max_length=2) == tokenizer.encode(tok, "hello world")[:2]


def test_fast_encoder_gives_the_same_ids(tok):
  fast = tokenizer.fast_encoder(tok)
  for text in ("system\nYou are a helpful assistant.<|im_end|>", "<image>\nWhat?  x",
               "a [PAD] b<|vid_end|>", " héllo 日本 \t\n\n x"):
    assert tokenizer.encode(fast, text) == tokenizer.encode(tok, text)


def test_adding_tokens_twice_keeps_ids(tokenizer_dir, tmp_path):
  tok, special = tokenizer.load_tokenizer(tokenizer_dir)
  tok.save_pretrained(tmp_path)  # a saved Show-o2 tokenizer already has the tokens
  tok2, special2 = tokenizer.load_tokenizer(tmp_path)
  assert special2 == special and len(tok2) == len(tok)


def test_test_tokenizer_is_deterministic(tmp_path):
  a = testing.build_test_tokenizer(tmp_path / "a")
  b = testing.build_test_tokenizer(tmp_path / "b")
  with open(os.path.join(a, "tokenizer.json")) as fa, open(os.path.join(b, "tokenizer.json")) as fb:
    assert json.load(fa) == json.load(fb)


def test_missing_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
    tokenizer.load_tokenizer(tmp_path / "nope")


def test_tokenizer_without_qwen_tokens_is_rejected(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  import transformers
  raw = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"lacks the Qwen2.5 special tokens.*<\|im_start\|>"):
    tokenizer.load_tokenizer(tmp_path)


@pytest.mark.skipif(not os.environ.get("SHOWO2_QWEN_TOKENIZER"),
                    reason="set SHOWO2_QWEN_TOKENIZER to a local Qwen2.5-Instruct tokenizer dir")
def test_real_qwen_ids_match_spec_4_1():
  tok, special = tokenizer.load_tokenizer(os.environ["SHOWO2_QWEN_TOKENIZER"])
  assert len(tok) == 151669
  assert (special.bos, special.eos, special.boi, special.eoi, special.img_pad, special.vid_pad,
          special.pad, special.img, special.bov, special.eov) == (
              151644, 151645, 151652, 151653, 151655, 151656, 151665, 151666, 151667, 151668)
  assert tokenizer.encode(tok, "system\nYou are a helpful assistant.<|im_end|>") == [
      8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645]
  assert tokenizer.encode(tok, "\n<|im_start|>user\n") == [198, 151644, 872, 198]
  assert tokenizer.encode(tok, "\n<|im_start|>assistant\n") == [198, 151644, 77091, 198]
