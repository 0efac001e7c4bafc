"""The jitted step: frozen params, the VAE pixel path, gradient accumulation, a learning run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import _train_common as tc
from showo2_jax import sharding as sharding_lib
from showo2_jax.config_lib import load_config
from showo2_jax.train import data as data_lib, optimizer, partition, tasks
from showo2_jax.train import state as state_lib, step as step_lib
from showo2_jax.train import synthetic, vae_encoder
from showo2_jax.vae import wan
from tests.train import runs


def _setup(config):
  task = tasks.build(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  lay = state_lib.layout(task.init_params,
                         lambda labels: optimizer.make_optimizer(config.optim, 10, labels),
                         task.labels, mesh)
  return task, mesh, lay


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree))


def _fast(jitted, *args):
  """`jitted` compiled for `args` with XLA's CPU optimisations off, as the subprocess
  runs are (runs.FAST_XLA_FLAGS): codegen only, in about half the compile time,
  and without changing the flags of this shared test process."""
  return jitted.lower(*args).compile(runs.FAST_COMPILER_OPTIONS)


@pytest.mark.slow
def test_stage1_pixel_step_consumes_the_vae_sample_and_keeps_frozen_params():
  """Stage-1 freezing on pixel batches with the tiny random Wan VAE (bf16, as autocast).

  One compile each of the pixel step and the latents step proves:
  - the pixel step equals the latents step fed `vae.sample` of the same pixels
    with the step's VAE key (same loss, gradients and update), and not the
    posterior mean: the step consumes exactly the VAE's sampled output;
  - frozen params stay bit-identical over 3 steps, trainable ones move, losses
    stay finite.
  Two programs may order float reductions differently, hence the tight
  tolerance instead of bit equality; the wrong latents miss it by far.
  """
  config = load_config("tiny_train:pixels")
  config.train.frozen = tc.STAGE1_FROZEN
  config.optim.warmup_steps = 0       # the warm-up's first lr is 0, as the original's
  task, mesh, lay = _setup(config)
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    encoder, vae_params = vae_encoder.load_params(config, mesh)
    assert encoder.cfg.dtype == "bfloat16" and encoder.cfg.dim == 8
    init = jax.jit(lambda r: state_lib.values(task.init_params(r)), out_shardings=lay.param_shardings)
    params = _fast(init, jax.random.PRNGKey(0))(jax.random.PRNGKey(0))
    before = _flat(params)
    state = state_lib.create(params, jnp.zeros((2,), jnp.uint32), lay)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    iterator = task.make_iterator(mesh)
    local = next(iterator)
    assert "latents" not in local and local["pixel_values"].shape == (8, 3, 64, 64)
    key = np.asarray(jax.random.fold_in(jax.random.PRNGKey(0), 0))
    pixels = data_lib.to_global(local, mesh, 8)
    pixel_step = _fast(step_lib.jit_train_step(
        step_lib.make_train_step(task.objective, lay, encoder=encoder), lay, pixels, with_vae=True),
        state, pixels, key, vae_params)

    # The latents path, fed the VAE's own sample of these pixels with the step's VAE key.
    encode = jax.jit(lambda p, x: wan.encode_posterior(p, x, encoder.cfg))
    mu, logvar = _fast(encode, vae_params, local["pixel_values"])(vae_params, local["pixel_values"])
    sampled = wan.sample_posterior(mu, logvar, vae_encoder.vae_rng(key))
    as_latents = lambda z: data_lib.to_global(
        dict({k: v for k, v in local.items() if k != "pixel_values"}, latents=np.asarray(z)), mesh, 8)
    latent_step = _fast(step_lib.jit_train_step(step_lib.make_train_step(task.objective, lay), lay,
                                                as_latents(mu)), state, as_latents(mu), key)
    _, mean_metrics = latent_step(copy(state), as_latents(mu), key)
    lat_state, lat_metrics = latent_step(copy(state), as_latents(sampled), key)

    state, metrics = pixel_step(state, pixels, key, vae_params)
    losses = [float(metrics["loss"])]
    for k in ("loss", "ntp_loss", "flow_loss", "grad_norm"):
      np.testing.assert_allclose(float(metrics[k]), float(lat_metrics[k]), rtol=1e-5, err_msg=k)
    assert abs(float(mean_metrics["flow_loss"]) - float(metrics["flow_loss"])) > 1e-3
    lat_params = _flat(lat_state.params)
    # Adam's first step moves each element by lr * g / (|g| + eps): an element whose
    # gradient is near eps turns the two programs' round-off into a visible change
    # (seen: 1 of 7168 elements of fusion_proj/fc1 off by 1.6e-5 with lr 1e-3, on one
    # machine and not another). Allow 0.1% of a param's elements off, by < lr / 10.
    lr = float(config.optim.learning_rate)
    for path, value in _flat(state.params).items():
      want = lat_params[path]
      off = ~np.isclose(value, want, rtol=1e-5, atol=1e-6)
      name = partition.path_name(path)
      assert off.mean() <= 1e-3, (name, int(off.sum()), off.size)
      assert np.max(np.abs(value - want), initial=0.0) < lr / 10, name

    for step in (1, 2):
      key = np.asarray(jax.random.fold_in(jax.random.PRNGKey(0), step))
      state, metrics = pixel_step(state, data_lib.to_global(next(iterator), mesh, 8), key, vae_params)
      losses.append(float(metrics["loss"]))
    after = _flat(state.params)
  assert int(state.step) == 3 and np.all(np.isfinite(losses)), losses
  for path, old in before.items():
    if lay.labels[path] == partition.FROZEN:
      np.testing.assert_array_equal(after[path], old, err_msg=partition.path_name(path))
  changed = [p for p, old in before.items()
             if lay.labels[p] != partition.FROZEN and not np.array_equal(old, after[p])]
  assert any(p[0] == "diffusion_head_b" for p in changed)   # zero-init head: its grads come first
  assert any(p[0] == "fusion_proj" for p in changed)


def test_gradient_accumulation_equals_one_big_batch():
  """With a per-row-mean loss, 2 microbatches of 4 give the step of one batch of 8."""
  def objective(params, batch, rng):
    del rng
    loss = jnp.mean(jnp.square(batch["x"] @ params["w"] - batch["y"]))
    return loss, {"loss": loss}

  config = load_config("tiny_train")
  mesh = sharding_lib.create_mesh(config.mesh)
  init = lambda rng: {"w": jax.random.normal(rng, (3, 2))}
  labels_fn = lambda p: partition.label_params(p, (), {})
  lay = state_lib.layout(init, lambda l: optimizer.make_optimizer(config.optim, 10, l), labels_fn, mesh)
  rng = np.random.default_rng(0)
  batch = {"x": rng.standard_normal((8, 3)).astype(np.float32),
           "y": rng.standard_normal((8, 2)).astype(np.float32)}
  results = []
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    for accum in (1, 2):
      state = state_lib.create(state_lib.init_params(init, lay, jax.random.PRNGKey(0)),
                               jnp.zeros((2,), jnp.uint32), lay)
      fn = step_lib.jit_train_step(step_lib.make_train_step(objective, lay, grad_accum_steps=accum),
                                   lay, batch)
      for _ in range(3):
        state, m = fn(state, batch, np.zeros(2, np.uint32))
      results.append((np.asarray(state.params["w"]), float(m["loss"]), float(m["grad_norm"])))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(results[0][1:], results[1][1:], rtol=1e-5)


def test_synthetic_iterator_resumes_and_shards():
  config = load_config("tiny_train")
  source = synthetic.SyntheticSource(data_lib.synthetic_spec(config))
  it = synthetic.SyntheticIterator(source, 0, 8)
  next(it), next(it)
  state = it.get_state()
  want = next(it)
  again = synthetic.SyntheticIterator(source, 0, 8)
  again.set_state(state)
  got = next(again)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  halves = [synthetic.SyntheticIterator(source, a, b, index=2) for a, b in ((0, 4), (4, 8))]
  joined = [next(h) for h in halves]
  for k in want:
    np.testing.assert_array_equal(np.concatenate([j[k] for j in joined]), want[k])


def test_small_train_batch_is_the_batch_of_the_originals_ref_bench():
  """shared/bench/ref_bench.py times the original on 2 rows of 1024 tokens, each one
  730-token image block (FM loss) and every other position a labelled text token."""
  config = load_config("small_train")
  batch = synthetic.SyntheticSource(data_lib.synthetic_spec(config)).rows(0, 0, 2)
  tokens, labels = batch["text_tokens"], batch["text_labels"]
  assert tokens.shape == (2, 1024)
  np.testing.assert_array_equal(batch["modality_positions"][:, 0], [[34, 730], [34, 730]])
  np.testing.assert_array_equal(batch["image_masks"].sum(1), [730, 730])
  np.testing.assert_array_equal(batch["is_und"], [0, 0])
  assert not (tokens == synthetic.PAD).any()
  text = batch["image_masks"] == 0
  np.testing.assert_array_equal(labels[text], tokens[text])
  assert (labels[~text] == synthetic.IGNORE).all()
  np.testing.assert_array_equal((labels != synthetic.IGNORE).sum(1), [294, 294])


@pytest.mark.slow
def test_tiny_run_learns(reference_run):
  """The README's main job: 300 steps, NTP and FM both fall; TensorBoard events written.

  This is the shared reference run (conftest.py), read rather than run again."""
  metrics = runs.read_metrics(reference_run)
  assert sorted(metrics) == list(range(1, 301))
  mean = lambda key, steps: float(np.mean([metrics[s][key] for s in steps]))
  first, last = range(1, 11), range(291, 301)
  assert mean("ntp_loss", last) < 0.5 * mean("ntp_loss", first), metrics[300]
  assert mean("flow_loss", last) < 0.85 * mean("flow_loss", first), metrics[300]
  assert list(reference_run.glob("events.out.tfevents*"))
  assert runs.checkpoint_steps(reference_run) == [200, 300]
  # The terminal: a compile line before the bar, then the losses every log_every
  # (here 1) steps, and the bar (kept) at 300/300.
  log = (reference_run / "log.txt").read_text()
  compiling = log.index("[train] compiling the train step")
  assert compiling < log.index("[train] compiled and ran step 1 in")
  assert "[train] step   2/300  loss " in log and "[train] step 300/300  loss " in log
  assert "ntp_loss" in log.split("[train] step 300/300", 1)[1].splitlines()[0]
  assert "train: 100%" in log and "300/300" in log
