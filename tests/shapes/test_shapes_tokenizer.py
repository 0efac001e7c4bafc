"""The shapes tokenizer: trained locally, loads like Qwen2.5's, every world word one token."""
from showo2_jax.data import sequences, tokenizer
from showo2_jax.shapes import tokenizer as shapes_tokenizer, world


def test_tokenizer(tmp_path):
  d = shapes_tokenizer.build_tokenizer(str(tmp_path / "a"))
  tok, special = tokenizer.load_tokenizer(d)
  assert len(tok) <= 400          # tiny_shapes' vocab_size
  for word in list(world.COLOURS) + list(world.SHAPES) + list(world.POSITIONS) + list(world.SIZES):
    assert len(tokenizer.encode(tok, " " + word)) == 1, word
  s = world.scene(0, 0)
  assert tok.decode(tokenizer.encode(tok, s.caption(0))) == s.caption(0)
  assert special.eos == tok.convert_tokens_to_ids("<|im_end|>")
  # A question row fits tiny_shapes' 48 tokens with its 17 visual tokens.
  row = sequences.llava_row(tok, [{"from": "human", "value": "<image>\n" + world.QUESTIONS["colour"]},
                                  {"from": "gpt", "value": "yellow"}], special, stage="tuning",
                            chat=sequences.ChatIds.build(tok), num_visual_tokens=17, max_seq_len=48)
  assert int((row["text_tokens"] != special.pad).sum()) <= 48
  # Deterministic: a second build is the same tokenizer.
  tok2, _ = tokenizer.load_tokenizer(shapes_tokenizer.build_tokenizer(str(tmp_path / "b")))
  assert tok.get_vocab() == tok2.get_vocab()
