"""Image editing as a training task: the row layout and the clean source context."""
import jax
import jax.numpy as jnp
import numpy as np

from showo2_jax.data import sequences
from showo2_jax.data.tokenizer import SpecialTokens
from showo2_jax.train import noising

SP = SpecialTokens(bos=1, eos=2, boi=3, eoi=4, img_pad=5, vid_pad=6, pad=0, img=7, bov=8, eov=9)
NV = 17  # tiny_train: 8x8 latents, 2x2 patches, + the time slot


def test_edit_row_layout_and_clean_source():
  row = sequences.edit_row([20, 21, 22], SP, num_visual_tokens=NV, max_seq_len=64)
  (s_off, s_len), (t_off, t_len) = row["modality_positions"].tolist()
  tokens = row["text_tokens"].tolist()
  assert (s_off, s_len) == (2, NV) and tokens[:2] == [SP.bos, SP.boi]
  assert tokens[s_off + NV:s_off + NV + 5] == [SP.eoi, 20, 21, 22, SP.boi]
  assert t_off == s_off + NV + 5 and t_len == NV and tokens[t_off + NV:t_off + NV + 2] == [SP.eoi, SP.eos]
  assert row["image_masks"][s_off:s_off + NV].sum() == 0           # source: no flow loss
  assert row["image_masks"][t_off:t_off + NV].sum() == NV          # target: flow loss
  assert (row["text_labels"] == sequences.IGNORE_INDEX).all()
  # The noising keeps the source clean (t = 1) and noises the target.
  batch = {k: jnp.asarray(v)[None] for k, v in row.items()}
  latents = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 16, 8, 8))
  flow = noising.noise_batch(jax.random.PRNGKey(1), latents, batch["modality_positions"],
                             batch["image_masks"], jnp.zeros((1,), jnp.int32))
  assert float(flow.t[0]) == 1.0 and float(flow.t[1]) < 1.0
  np.testing.assert_array_equal(flow.x_t[0], latents[0, 0])
