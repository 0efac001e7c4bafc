"""Image editing as a training task: the row layout, the clean source context, learning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax import sharding as sharding_lib
from showo2_jax.config_lib import load_config
from showo2_jax.data import sequences
from showo2_jax.data.tokenizer import SpecialTokens
from showo2_jax.models import showo2
from showo2_jax.train import data as data_lib, noising, optimizer, state as state_lib
from showo2_jax.train import step as step_lib, tasks
from tests.train import runs

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


# ----------------------------------------------------------------------------- learning

K = 4                                  # latent patterns ("scenes")
INSTRUCTIONS = ([20, 21, 22], [30, 31, 32])


def _edit_target(source_class, instruction):
  """The edit: instruction i maps scene c to scene (c + 1 + i) mod K."""
  return (source_class + 1 + instruction) % K


def _edit_batch(patterns, rng, n, *, source_classes=None, instructions=None, noise=0.1):
  """Pipeline-layout rows (latents (n*2, C, H, W): source, target) of random edits."""
  c = rng.integers(K, size=n) if source_classes is None else np.asarray(source_classes)
  i = rng.integers(2, size=n) if instructions is None else np.asarray(instructions)
  rows = [sequences.edit_row(INSTRUCTIONS[k], SP, num_visual_tokens=NV, max_seq_len=64) for k in i]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  jitter = lambda: noise * rng.standard_normal((n,) + patterns.shape[1:]).astype(np.float32)
  pairs = np.stack([patterns[c] + jitter(), patterns[_edit_target(c, i)] + jitter()], axis=1)
  batch["latents"] = pairs.reshape((-1,) + patterns.shape[1:]).astype(np.float32)
  return batch, c, i


@pytest.mark.slow
def test_editing_learns_to_use_the_source_and_the_instruction():
  """tiny_train's model and train step on edit rows whose target is a deterministic
  function of (source, instruction): the flow loss falls, and after training the
  one-step prediction from pure noise (t = 0) lands on the right target scene,
  which neither the source nor the instruction alone determines.

  (A target that is the source's exact negative, per position, did not learn in
  400 steps: a 2-layer, 64-wide model must learn to attend to the one source
  token 22 positions back; that is a capacity limit, not a bug of the layout.)
  """
  config = load_config("tiny_train")
  config.optim.warmup_steps = 20
  steps, rows = 300, 8
  task = tasks.build(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  lay = state_lib.layout(task.init_params,
                         lambda labels: optimizer.make_optimizer(config.optim, steps, labels),
                         task.labels, mesh)
  rng = np.random.default_rng(0)
  patterns = rng.standard_normal((K, 16, 8, 8)).astype(np.float32)
  losses = []
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    params = state_lib.init_params(task.init_params, lay, jax.random.PRNGKey(0))
    state = state_lib.create(params, jnp.zeros((2,), jnp.uint32), lay)
    first = data_lib.to_global(_edit_batch(patterns, rng, rows)[0], mesh, rows)
    step = step_lib.jit_train_step(step_lib.make_train_step(task.objective, lay), lay, first)
    key = lambda s: np.asarray(jax.random.fold_in(jax.random.PRNGKey(1), s))
    step = step.lower(state, first, key(0)).compile(runs.FAST_COMPILER_OPTIONS)
    for s in range(steps):
      batch = data_lib.to_global(_edit_batch(patterns, rng, rows)[0], mesh, rows)
      state, metrics = step(state, batch, key(s))
      losses.append(float(metrics["flow_loss"]))
    params = state_lib.values(jax.device_get(state.params))
  first, last = np.mean(losses[:20]), np.mean(losses[-20:])
  assert np.all(np.isfinite(losses)) and last < 0.7 * first, (first, last)

  # One Euler step from pure noise: x1_hat = x0 + v(x0, t = 0), per row.
  model = task.objective.model
  n = 32
  x0 = rng.standard_normal((n,) + patterns.shape[1:]).astype(np.float32)

  @jax.jit
  def velocity(params, tokens, mp, source):
    x_t = jnp.stack([source, x0], axis=1).reshape((-1,) + x0.shape[1:])
    t = jnp.tile(jnp.asarray([1.0, 0.0]), n)
    return model.apply({"params": params}, tokens, x_t, t, mp, compute_logits=False)["v_tok"]

  def errors(source_classes, instructions, target_classes):
    """(n,) mean squared error of the prediction against each row's target scene."""
    batch, _, _ = _edit_batch(patterns, np.random.default_rng(7), n, noise=0.0,
                              source_classes=source_classes, instructions=instructions)
    v = velocity(params, batch["text_tokens"], batch["modality_positions"],
                 batch["latents"].reshape((n, 2) + x0.shape[1:])[:, 0])
    want = np.zeros((n, 2) + x0.shape[1:], np.float32)
    want[:, 1] = patterns[target_classes] - x0
    labels, mask = showo2.flow_targets_and_mask(
        jnp.asarray(want.reshape((-1,) + x0.shape[1:])), batch["image_masks"],
        batch["modality_positions"], v.shape[-1])
    err = jnp.sum(jnp.where(mask[..., None], jnp.square(v - labels), 0.0), axis=(1, 2))
    return np.asarray(err / (jnp.sum(mask, axis=1) * v.shape[-1]))

  c = np.arange(n) % K
  i = (np.arange(n) // K) % 2
  right = errors(c, i, _edit_target(c, i))
  # The scene each row's prediction is nearest to: the edit's target for most rows.
  nearest = np.argmin(np.stack([errors(c, i, np.full(n, k)) for k in range(K)]), axis=0)
  accuracy = float(np.mean(nearest == _edit_target(c, i)))
  # The same target asked with the wrong source (or the wrong instruction) misses it.
  wrong_source = errors((c + 1) % K, i, _edit_target(c, i))
  wrong_instruction = errors(c, 1 - i, _edit_target(c, i))
  print(f"\nedit flow loss {first:.3f} -> {last:.3f}; t=0 prediction error {right.mean():.3f} "
        f"(wrong source {wrong_source.mean():.3f}, wrong instruction {wrong_instruction.mean():.3f}),"
        f" nearest-scene accuracy {accuracy:.2f}")
  assert accuracy >= 0.75, accuracy                   # chance: 0.25
  assert right.mean() < 0.7 * wrong_source.mean(), (right.mean(), wrong_source.mean())
  assert right.mean() < 0.7 * wrong_instruction.mean(), (right.mean(), wrong_instruction.mean())
