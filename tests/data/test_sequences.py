"""Sequence layouts of spec section 4: tokens, labels and offsets exactly."""
import numpy as np
import pytest

from showo2_jax.data import sequences, tokenizer

IGN = sequences.IGNORE_INDEX
NV = 5  # N + 1: a 2x2 grid plus the time slot keeps the expectations readable


def enc(tok, text):
  return tokenizer.encode(tok, text)


def test_t2i_row_layout(special):
  s = special
  row = sequences.t2i_row([7, 8, 9], s, num_visual_tokens=NV, max_seq_len=20)
  # max_text_len = 20 - 5 - 4 = 11 -> 8 pads after eos.
  expect = [s.bos, 7, 8, 9, s.boi] + [s.img_pad] * NV + [s.eoi, s.eos] + [s.pad] * 8
  assert row["text_tokens"].tolist() == expect
  assert (row["text_labels"] == IGN).all()
  assert row["modality_positions"].tolist() == [[5, NV]]
  assert row["image_masks"].tolist() == [int(t == s.img_pad) for t in expect]
  assert all(v.dtype == np.int32 for v in row.values())


def test_t2i_row_truncates_the_prompt_and_keeps_the_length(special):
  row = sequences.t2i_row(list(range(30)), special, num_visual_tokens=NV, max_seq_len=20)
  assert row["text_tokens"].tolist()[:12] == [special.bos] + list(range(11))
  assert row["text_tokens"][-1] == special.eos and len(row["text_tokens"]) == 20
  assert row["modality_positions"].tolist() == [[13, NV]]


def test_null_prompt_equals_a_dropped_caption(special):
  s = special
  null = sequences.t2i_null_row(s, num_visual_tokens=NV, max_seq_len=20)
  assert null["text_tokens"].tolist() == (
      [s.bos, s.boi] + [s.img_pad] * NV + [s.eoi, s.eos] + [s.pad] * 11)
  assert null["modality_positions"].tolist() == [[2, NV]]


def test_t2i_prompt_rows_are_cond_then_null(tok, special):
  s = special
  a, b = enc(tok, "a cat"), enc(tok, "a dog on the table")
  rows = sequences.t2i_prompt_rows([a, b], s)
  assert rows == [[s.bos] + a + [s.boi], [s.bos] + b + [s.boi], [s.bos, s.boi], [s.bos, s.boi]]
  assert sequences.t2i_prompt_rows([a], s, cfg=False) == [[s.bos] + a + [s.boi]]
  ctx = sequences.visual_block(s, 3)
  assert sequences.t2i_prompt_rows([a], s, context=ctx) == [[s.bos] + ctx + a + [s.boi],
                                                            [s.bos] + ctx + [s.boi]]


def test_caption_cleaning_matches_remove_prefix():
  assert sequences.clean_caption("The image features a cat.\nThis is it") == "a cat.it"
  # Replaced anywhere, not only at the start (the original's str.replace).
  assert sequences.remove_prefix("A dog. In the image, a cat") == "A dog. a cat"
  assert sequences.clean_caption("The image features\na cat", strip_boilerplate=False) == (
      "The image featuresa cat")


def test_captioning_row_layout(special):
  s = special
  row = sequences.captioning_row([7, 8], s, num_visual_tokens=NV, max_seq_len=16)
  head = [s.bos, s.boi] + [s.img_pad] * NV + [s.eoi]
  assert row["text_tokens"].tolist() == head + [7, 8, s.eos] + [s.pad] * 5
  assert row["text_labels"].tolist() == (
      [s.bos, s.boi] + [IGN] * NV + [s.eoi, 7, 8, s.eos] + [IGN] * 5)
  assert row["modality_positions"].tolist() == [[2, NV]]


def test_llava_turn_rewrites():
  convs = [{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."},
           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]
  src, tgt = sequences.llava_turns(convs, "tuning")
  assert src == ["<image>\nWhat is it?", "Sure?"]
  assert tgt == ["A cat.<|im_end|>", "Yes.<|im_end|>"]
  src, _ = sequences.llava_turns(convs, "pre-training-1-5")
  assert src == ["<image>", "Sure?"]


def test_llava_tuning_row(tok, special):
  s = special
  chat = sequences.ChatIds.build(tok)
  convs = [{"from": "human", "value": "What?\n<image>"}, {"from": "gpt", "value": "A cat."},
           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]
  row = sequences.llava_row(tok, convs, s, stage="tuning", chat=chat, num_visual_tokens=NV,
                            max_seq_len=128)
  sys_ids, user, asst = list(chat.system), list(chat.user), list(chat.assistant)
  assert sys_ids == enc(tok, "system\nYou are a helpful assistant.<|im_end|>")
  src1 = enc(tok, "<image>\nWhat?")
  assert src1[0] == s.img
  block = [s.boi] + [s.img_pad] * NV + [s.eoi]
  turn1_src = sys_ids + user + block + src1[1:] + [s.eos] + asst
  tgt1 = enc(tok, "A cat.<|im_end|>")
  turn2_src = user + enc(tok, "Sure?") + [s.eos] + asst
  tgt2 = enc(tok, "Yes.<|im_end|>")
  expect = [s.bos] + turn1_src + tgt1 + turn2_src + tgt2
  n = len(expect)
  assert row["text_tokens"].tolist() == expect + [s.pad] * (128 - n)
  labels = [IGN] * (1 + len(turn1_src)) + tgt1 + [IGN] * len(turn2_src) + tgt2
  assert row["text_labels"].tolist() == labels + [IGN] * (128 - n)
  # 1 (bos) + tokens before the <image> in the prefixed source + 1 (boi).
  offset = 1 + len(sys_ids) + len(user) + 1
  assert row["modality_positions"].tolist() == [[offset, NV]]
  assert row["text_tokens"][offset] == s.img_pad and row["text_tokens"][offset - 1] == s.boi
  assert tgt1[-1] == s.eos  # the answer's eos is labelled


def test_llava_pretraining_row_drops_the_question(tok, special):
  s = special
  convs = [{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "A cat."}]
  row = sequences.llava_row(tok, convs, s, stage="pre-training", num_visual_tokens=NV,
                            max_seq_len=32)
  tgt = enc(tok, "A cat.<|im_end|>")
  block = [s.boi] + [s.img_pad] * NV + [s.eoi]
  assert row["text_tokens"].tolist()[:1 + len(block) + len(tgt)] == [s.bos] + block + tgt
  assert row["modality_positions"].tolist() == [[2, NV]]
  assert row["text_labels"].tolist()[:1 + len(block) + len(tgt)] == [IGN] * (1 + len(block)) + tgt


def test_llava_text_only_sample_gets_an_empty_slot(tok, special):
  convs = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
  row = sequences.llava_row(tok, convs, special, stage="tuning", chat=sequences.ChatIds.build(tok),
                            num_visual_tokens=NV, max_seq_len=64)
  assert row["modality_positions"].tolist() == [[0, 0]]
  assert row["image_masks"].sum() == 0


def test_llava_block_cut_by_truncation_is_rejected(tok, special):
  convs = [{"from": "human", "value": "word " * 40 + "\n<image>"}, {"from": "gpt", "value": "A."}]
  convs[0]["value"] = "word " * 40 + "<image>"  # image after a long question
  with pytest.raises(sequences.LayoutError):
    sequences.llava_row(tok, convs, special, stage="tuning", chat=sequences.ChatIds.build(tok),
                        num_visual_tokens=NV, max_seq_len=48)


def test_llava_rows_truncate_to_max_seq_len(tok, special):
  convs = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "long " * 80}]
  row = sequences.llava_row(tok, convs, special, stage="tuning", chat=sequences.ChatIds.build(tok),
                            num_visual_tokens=NV, max_seq_len=40)
  assert row["text_tokens"].shape == (40,) and (row["text_tokens"] != special.pad).all()


def test_multi_image_rows_get_one_block_per_image(tok, special):
  """LLaVA-OneVision multi-image rows: every <image> (in one turn or across turns)
  becomes its own visual block and slot; M is padded to max_num_images."""
  s = special
  chat = sequences.ChatIds.build(tok)
  convs = [{"from": "human", "value": "<image>\n<image>\nA"}, {"from": "gpt", "value": "x"},
           {"from": "human", "value": "<image>\nB"}, {"from": "gpt", "value": "y"}]
  with pytest.raises(sequences.LayoutError, match="more than 1 <image>"):
    sequences.llava_row(tok, convs, s, stage="tuning", chat=chat, num_visual_tokens=NV,
                        max_seq_len=128)
  row = sequences.llava_row(tok, convs, s, stage="tuning", chat=chat, num_visual_tokens=NV,
                            max_seq_len=160, max_num_images=4)
  pos = row["modality_positions"].tolist()
  assert len(pos) == 4 and pos[3] == [0, 0]
  tokens = row["text_tokens"].tolist()
  for offset, length in pos[:3]:
    assert length == NV and tokens[offset - 1] == s.boi and tokens[offset + NV] == s.eoi
    assert tokens[offset:offset + NV] == [s.img_pad] * NV
  assert row["image_masks"].sum() == 3 * NV and s.img not in tokens
  assert pos[0][0] + NV + 3 == pos[1][0]  # eoi, the "\n" between the markers, boi
  # Answers stay labelled, the images are not.
  labelled = [t for t, l in zip(tokens, row["text_labels"].tolist()) if l != IGN]
  assert labelled == enc(tok, "x<|im_end|>") + enc(tok, "y<|im_end|>")


def test_understanding_prompt_with_several_images(tok, special):
  chat = sequences.ChatIds.build(tok)
  p = sequences.understanding_prompt(tok, "Same?", special, chat, num_visual_tokens=NV,
                                     num_images=2)
  q = sequences.understanding_prompt(tok, "<image>\n<image>\nSame?", special, chat,
                                     num_visual_tokens=NV, num_images=2)
  assert p["text_tokens"].tolist() == q["text_tokens"].tolist()
  assert p["modality_positions"].shape == (2, 2)
  assert p["attention_modality_positions"].tolist() == p["modality_positions"].tolist()
  convs = [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": ""}]
  train = sequences.llava_row(tok, convs, special, stage="tuning", chat=chat,
                              num_visual_tokens=NV, max_seq_len=160, max_num_images=2)
  n = p["prompt_length"]
  assert p["text_tokens"].tolist() == train["text_tokens"][:n].tolist()
  assert p["modality_positions"].tolist() == train["modality_positions"].tolist()
  with pytest.raises(ValueError, match="1 <image> markers but 2 images"):
    sequences.understanding_prompt(tok, "<image> Same?", special, chat, num_visual_tokens=NV,
                                   num_images=2)


def test_understanding_prompt_fixed_mode_is_the_training_layout(tok, special):
  s = special
  chat = sequences.ChatIds.build(tok)
  p = sequences.understanding_prompt(tok, "What?", s, chat, num_visual_tokens=NV)
  convs = [{"from": "human", "value": "What?\n<image>"}, {"from": "gpt", "value": ""}]
  train = sequences.llava_row(tok, convs, s, stage="tuning", chat=chat, num_visual_tokens=NV,
                              max_seq_len=128)
  n = p["prompt_length"]
  # The prompt is the training row up to where the answer starts.
  assert p["text_tokens"].tolist() == train["text_tokens"][:n].tolist()
  la = 1 + len(chat.system) + len(chat.user)
  assert p["modality_positions"].tolist() == p["attention_modality_positions"].tolist() == [[la + 1, NV]]


def test_understanding_prompt_parity_mode_reproduces_inference_mmu(tok, special):
  s = special
  chat = sequences.ChatIds.build(tok)
  p = sequences.understanding_prompt(tok, "What?", s, chat, num_visual_tokens=NV, parity_mode=True,
                                     pad_to_multiple=32)
  head = [s.bos] + list(chat.system) + list(chat.user)
  la = len(head)
  expect = head + [s.boi] + [s.img_pad] * NV + [s.eoi] + enc(tok, "What?") + list(chat.assistant)
  assert p["prompt_length"] == len(expect)
  padded = -(-len(expect) // 32) * 32
  assert p["text_tokens"].tolist() == expect + [s.pad] * (padded - len(expect))
  assert p["modality_positions"].tolist() == [[la + 1, NV]]           # time slot after boi
  assert p["attention_modality_positions"].tolist() == [[la + 2, NV]]  # the off-by-one block


def test_video_understanding_prompt(tok, special):
  s = special
  chat = sequences.ChatIds.build(tok)
  p = sequences.video_understanding_prompt(tok, "Why?", s, chat, num_frames=3, tokens_per_frame=4)
  la = 1 + len(chat.system) + len(chat.user)
  assert p["modality_positions"].tolist() == p["attention_modality_positions"].tolist() == [[la + 1, 13]]
  assert (p["text_tokens"] == s.img_pad).sum() == 13
  q = sequences.video_understanding_prompt(tok, "Why?", s, chat, num_frames=3, tokens_per_frame=4,
                                           parity_mode=True, parity_block_length=NV)
  assert q["attention_modality_positions"].tolist() == [[la + 2, NV]]
  assert q["modality_positions"].tolist() == [[la + 1, 13]]
  with pytest.raises(ValueError):
    sequences.video_understanding_prompt(tok, "Why?", s, chat, num_frames=3, parity_mode=True)


def test_interleaved_row(special):
  s = special
  flag = [50, 51]
  caps = [[7, 8], [9], [10, 11, 12]]
  row = sequences.interleaved_row(caps, s, flag_ids=flag, num_visual_tokens=NV, max_seq_len=64,
                                  max_num_images=4)
  block = [s.boi] + [s.img_pad] * NV + [s.eoi]
  expect = [s.bos] + flag + [7, 8] + block + [9] + block + [10, 11, 12] + block + [s.eos]
  assert row["text_tokens"].tolist() == expect + [s.pad] * (64 - len(expect))
  labels = [s.bos, IGN, IGN] + expect[3:]  # img_pad ids are labels too (quirk 10.11)
  assert row["text_labels"].tolist() == labels + [IGN] * (64 - len(expect))
  assert row["modality_positions"].tolist() == [[6, NV], [14, NV], [24, NV], [0, 0]]
  assert row["image_masks"].sum() == 3 * NV


def test_interleaved_row_without_image_pad_labels(special):
  row = sequences.interleaved_row([[7]], special, flag_ids=[], num_visual_tokens=NV, max_seq_len=16,
                                  max_num_images=1, label_image_pads=False)
  labels = row["text_labels"].tolist()
  assert labels[:10] == [special.bos, 7, special.boi] + [IGN] * NV + [special.eoi, special.eos]


def test_interleaved_caption_budget_fills_at_most_max_seq_len(special):
  budget = sequences.interleaved_max_text_len(4352, 9, 730, 4)
  assert budget == (4352 - 9 - 732 * 4 - 2) // 4
  caps = [list(range(100, 100 + 1000))] * 4
  row = sequences.interleaved_row(caps, special, flag_ids=list(range(9)), num_visual_tokens=730,
                                  max_seq_len=4352)
  assert row["text_tokens"].shape == (4352,)
  assert row["text_tokens"][row["modality_positions"][3, 0] + 730] == special.eoi


def test_vist_window_can_be_any_window():
  rng = np.random.default_rng(0)
  starts = {sequences.vist_window_start(6, 4, rng) for _ in range(200)}
  assert starts == {0, 1, 2}  # the original never picks 2 (the last window)
  assert sequences.vist_window_start(3, 4, rng) == 0


def test_mixed_image_prompt(special):
  s = special
  block = [s.boi] + [s.img_pad] * NV + [s.eoi]
  history = [40, 41, 42]
  cond, null = sequences.mixed_image_prompt(history, [], s, num_visual_tokens=NV, pad_multiple=16)
  assert cond["text_tokens"].tolist() == [s.bos] + history + block + [s.pad] * 5
  assert cond["modality_positions"].tolist() == [[5, NV]]
  assert null["text_tokens"].tolist() == [s.bos] + block + [s.pad] * 8
  assert null["modality_positions"].tolist() == [[2, NV]]
  # Next round: the story continues after the image; the next image's slot is appended.
  history2 = cond["history_ids"].tolist() + [43, 44]
  text = sequences.mixed_text_prompt(history2, cond["modality_positions"], s)
  assert text["text_tokens"].tolist() == [s.bos] + history2
  cond2, null2 = sequences.mixed_image_prompt(history2, cond["modality_positions"].tolist(), s,
                                              num_visual_tokens=NV, pad_multiple=16)
  assert cond2["modality_positions"].tolist() == [[5, NV], [len(history2) + 2, NV]]
  assert null2["modality_positions"].tolist() == [[2, NV], [2, NV]]
  assert cond2["text_tokens"].shape == null2["text_tokens"].shape == (32,)
  first = cond2["modality_positions"][0, 0]
  assert (cond2["text_tokens"][first:first + NV] == s.img_pad).all()
