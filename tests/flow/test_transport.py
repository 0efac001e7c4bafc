"""Tests of the flow-matching transport: path, time sampling, grids, solvers, CFG.

Expected values come from spec section 5 and closed-form ODE solutions. The parity
test against sampling.npz needs the model and lives with the inference code.
"""
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from showo2_jax.flow import transport as tp


def _bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


# --- path ---------------------------------------------------------------------------------------


def test_interpolate_endpoints_and_broadcast():
  x1 = jnp.full((3, 2, 4, 4), 2.0)
  x0 = jnp.full((3, 2, 4, 4), -1.0)
  t = jnp.array([0.0, 0.25, 1.0])
  xt = tp.interpolate(x1, x0, t)
  np.testing.assert_allclose(xt[:, 0, 0, 0], [-1.0, -0.25, 2.0])
  assert xt.shape == x1.shape
  np.testing.assert_array_equal(tp.target_velocity(x1, x0), 3.0)


def test_interpolate_casts_t_to_latent_dtype():
  x1 = jnp.ones((1, 4), jnp.bfloat16)
  assert tp.interpolate(x1, x1, jnp.array([0.3], jnp.float32)).dtype == jnp.bfloat16


# --- training time sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("tokens,mu", [(730, 0.580234), (1025, 0.630169), (4097, 1.150169)])
def test_resolution_shift_mu(tokens, mu):
  assert tp.resolution_shift_mu(tokens) == pytest.approx(mu, abs=1e-6)


def test_shift_time_matches_original_formula_and_keeps_endpoints():
  mu = tp.resolution_shift_mu(730)
  t = np.linspace(0.01, 0.99, 50)
  s = 1 - t
  expected = 1 - math.exp(mu) / (math.exp(mu) + (1 / s - 1))
  np.testing.assert_allclose(tp.shift_time(t, mu), expected, rtol=1e-5, atol=1e-6)
  ends = tp.shift_time(jnp.array([0.0, 1.0]), mu)
  np.testing.assert_array_equal(ends, [0.0, 1.0])
  assert np.all(np.asarray(tp.shift_time(t, mu)) < t)  # pushed toward noise


def test_sample_train_t_distribution_and_shift():
  rng = jax.random.PRNGKey(0)
  t = tp.sample_train_t(rng, 20000)
  assert t.shape == (20000,) and t.dtype == jnp.float32
  assert float(t.min()) > 0 and float(t.max()) < 1
  assert float(jnp.median(t)) == pytest.approx(0.5, abs=0.02)  # sigmoid of a symmetric normal
  mu = tp.resolution_shift_mu(730)
  shifted = tp.sample_train_t(rng, 20000, shift_mu=mu)
  np.testing.assert_allclose(shifted, tp.shift_time(t, mu), rtol=1e-6)
  assert float(jnp.median(shifted)) == pytest.approx(1 / (1 + math.exp(mu)), abs=0.02)


def test_sample_train_t_clean_rows_stay_one():
  t0 = jnp.array([0.0, 1.0, 0.0, 1.0])
  t = tp.sample_train_t(jax.random.PRNGKey(1), 4, t0=t0, shift_mu=tp.resolution_shift_mu(730))
  assert not np.any(np.isnan(t))
  np.testing.assert_array_equal(t[1::2], 1.0)
  assert np.all(np.asarray(t[::2]) < 1.0)


def test_sample_train_t_bf16_rounding_and_jit():
  fn = jax.jit(lambda r: tp.sample_train_t(r, 64, shift_mu=0.58, round_to_bf16=True))
  t = fn(jax.random.PRNGKey(2))
  assert t.dtype == jnp.float32
  np.testing.assert_array_equal(t, _bf16(t))
  np.testing.assert_array_equal(tp.bf16_round(jnp.array([1.0])), [1.0])


# --- inference grid and noise -------------------------------------------------------------------


def test_time_grid_values():
  np.testing.assert_allclose(tp.time_grid(5), [0, 0.1, 0.25, 0.5, 1], atol=1e-7)
  np.testing.assert_allclose(tp.time_grid(5, None), [0, 0.25, 0.5, 0.75, 1])
  g = np.asarray(tp.time_grid(6))
  assert g.dtype == np.float32 and g[0] == 0 and g[-1] == 1
  lin = np.linspace(0, 1, 6)
  np.testing.assert_allclose(g, lin / (3 - 2 * lin), rtol=1e-6)
  with pytest.raises(ValueError):
    tp.time_grid(1)


def test_time_grid_bitwise_matches_torch():
  torch = pytest.importorskip("torch")
  for n in (2, 5, 6, 20, 21, 50, 100, 101):
    t = torch.linspace(0, 1, n)
    t = t / (t + 3.0 - 3.0 * t)
    np.testing.assert_array_equal(tp.time_grid(n), t.numpy(), err_msg=f"n={n}")


def test_initial_noise_is_bf16_representable():
  z = tp.initial_noise(jax.random.PRNGKey(3), (2, 16, 8, 8))
  assert z.dtype == jnp.float32 and z.shape == (2, 16, 8, 8)
  np.testing.assert_array_equal(z, _bf16(z))
  raw = tp.initial_noise(jax.random.PRNGKey(3), (2, 16, 8, 8), round_to_bf16=False)
  np.testing.assert_array_equal(z, _bf16(raw))
  assert not np.array_equal(raw, z)


# --- solvers ------------------------------------------------------------------------------------

LAM = -1.3


def _linear_v(x, t):
  return LAM * x


def _cos_v(x, t):
  """dx/dt = cos(2 pi t) x, so x(1) = x(0) exp(sin(2 pi) / (2 pi)) = x(0)."""
  return jnp.cos(2 * jnp.pi * t)[:, None] * x


def test_euler_matches_discrete_closed_form():
  grid = tp.time_grid(6)
  x0 = jnp.arange(1.0, 7.0).reshape(2, 3)
  h = np.diff(np.asarray(grid, np.float64))
  expected = np.asarray(x0) * np.prod(1 + LAM * h)
  out, traj = tp.euler_sample(_linear_v, x0, grid, return_trajectory=True)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert traj.shape == (6, 2, 3)
  np.testing.assert_array_equal(traj[0], x0)
  np.testing.assert_array_equal(traj[-1], out)


def test_euler_exact_for_time_only_velocity():
  # v = 1 integrates exactly: x(1) = x(0) + 1 on any grid.
  out = tp.euler_sample(lambda x, t: jnp.ones_like(x), jnp.zeros((2, 3)), tp.time_grid(7))
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_euler_evaluates_n_minus_1_times_never_at_one():
  seen = []

  def v(x, t):
    jax.debug.callback(lambda tt: seen.append(np.asarray(tt).copy()), t, ordered=True)
    return jnp.zeros_like(x)

  grid = tp.time_grid(6)
  jax.block_until_ready(jax.jit(lambda x: tp.euler_sample(v, x, grid))(jnp.zeros((2, 3))))
  assert len(seen) == 5
  np.testing.assert_array_equal(np.stack(seen)[:, 0], np.asarray(grid)[:-1])
  assert all(s.shape == (2,) and s.dtype == np.float32 for s in seen)


def test_samplers_keep_fp32_state_with_bf16_model():
  v = lambda x, t: (LAM * x).astype(jnp.bfloat16)
  for method in tp.SAMPLERS:   # every registered sampler
    out = tp.sample_ode(v, jnp.ones((2, 3), jnp.bfloat16), tp.time_grid(4), method=method)
    assert out.dtype == jnp.float32, method


def test_heun_is_second_order():
  x0 = jnp.ones((1, 1))
  exact = math.exp(LAM)
  errs = [abs(float(tp.heun_sample(_linear_v, x0, tp.time_grid(n, None))[0, 0]) - exact)
          for n in (11, 21, 41)]
  for coarse, fine in zip(errs, errs[1:]):
    assert 3.5 < coarse / fine < 4.5
  e_euler = abs(float(tp.euler_sample(_linear_v, x0, tp.time_grid(21, None))[0, 0]) - exact)
  assert errs[1] < e_euler / 20


def test_dopri5_accuracy_and_tolerance_control():
  x0 = jnp.arange(1.0, 4.0)[:, None] * jnp.ones((3, 4))
  grid = tp.time_grid(6)
  loose, traj, stats = tp.dopri5_sample(_cos_v, x0, grid, return_trajectory=True, return_stats=True)
  assert float(jnp.max(jnp.abs(loose - x0) / x0)) < 1e-3
  exact_traj = np.asarray(x0) * np.exp(np.sin(2 * np.pi * np.asarray(grid)) / (2 * np.pi))[:, None, None]
  np.testing.assert_allclose(traj, exact_traj, rtol=2e-3)
  assert int(stats.num_evals) == 2 + 6 * int(stats.num_steps)
  tight, tight_stats = tp.dopri5_sample(_cos_v, x0, grid, atol=1e-9, rtol=1e-7, return_stats=True)
  assert float(jnp.max(jnp.abs(tight - x0) / x0)) < 1e-5
  assert int(tight_stats.num_steps) > int(stats.num_steps)


@pytest.mark.slow
def test_samplers_under_jit_match_eager():
  grid = tp.time_grid(6)
  x0 = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 4))
  for method in tp.SAMPLERS:   # every registered sampler
    eager = tp.sample_ode(_linear_v, x0, grid, method=method)
    jitted = jax.jit(lambda x, g, m=method: tp.sample_ode(_linear_v, x, g, method=m))(x0, grid)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, err_msg=method)
  with pytest.raises(ValueError, match="unknown ODE method"):
    tp.sample_ode(_linear_v, x0, grid, method="rk4")


def test_velocity_shape_mismatch_is_reported():
  with pytest.raises(ValueError, match="velocity shape"):
    tp.euler_sample(lambda x, t: x[:1], jnp.zeros((2, 3)), tp.time_grid(3))


# --- classifier-free guidance -------------------------------------------------------------------


def _cfg_reference(vc, vu, g):
  """PyTorch's bf16 arithmetic: round after each op, the scalar applied in float32."""
  vc, vu = _bf16(vc), _bf16(vu)
  return _bf16(vu + _bf16(np.float32(g) * _bf16(vc - vu)))


def test_cfg_combine_fp32_arithmetic():
  vc, vu = jnp.array([1.0, 2.0, -3.0]), jnp.array([0.5, 2.0, 1.0])
  out = tp.cfg_combine(vc, vu, 5.0, dtype=jnp.float32)
  np.testing.assert_allclose(out, [3.0, 2.0, -19.0])
  assert out.dtype == jnp.float32
  assert tp.cfg_combine(vc, vu, 5.0, dtype=None).dtype == jnp.float32


@pytest.mark.parametrize("g", [5.0, 7.3])
def test_cfg_combine_bf16_rounding(g):
  rng = np.random.default_rng(0)
  vc, vu = rng.normal(size=(2, 4096)).astype(np.float32)
  expected = _cfg_reference(vc, vu, g)
  for fn in (tp.cfg_combine, jax.jit(tp.cfg_combine, static_argnames="dtype")):
    out = fn(vc, vu, g)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected)
  # Differs from fp32 arithmetic: the rounding is really there.
  assert not np.array_equal(expected, vu + g * (vc - vu))


def test_cfg_combine_bitwise_matches_torch_bf16():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  vc, vu = rng.normal(size=(2, 4096)).astype(np.float32)
  for g in (5.0, 7.3):
    tc, tu = torch.tensor(vc).bfloat16(), torch.tensor(vu).bfloat16()
    expected = (tu + g * (tc - tu)).float().numpy()
    np.testing.assert_array_equal(np.asarray(tp.cfg_combine(vc, vu, g), np.float32), expected)


def test_cfg_velocity_fn_batches_cond_and_uncond_together():
  calls = []

  def model_fn(x, t):
    calls.append((x.shape, t.shape))
    # Row-dependent output so that cond and uncond halves differ: v = x * (1 + row).
    rows = jnp.arange(x.shape[0], dtype=jnp.float32)[:, None]
    return x * (1 + rows) + t[:, None]

  x = jnp.ones((2, 3))
  t = jnp.full((2,), 0.25)
  v = tp.cfg_velocity_fn(model_fn, 5.0, dtype=jnp.float32)(x, t)
  assert calls == [((4, 3), (4,))]
  full = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
  np.testing.assert_allclose(v, full[2:] + 5.0 * (full[:2] - full[2:]))


def test_cfg_velocity_fn_zero_scale_does_not_double():
  calls = []

  def model_fn(x, t):
    calls.append(x.shape)
    return 2 * x

  v = tp.cfg_velocity_fn(model_fn, 0.0)(jnp.ones((2, 3)), jnp.zeros((2,)))
  assert calls == [(2, 3)]
  np.testing.assert_array_equal(v, 2.0)


def test_guided_euler_under_jit_counts_model_calls():
  counter = []

  def model_fn(x, t):
    jax.debug.callback(lambda: counter.append(1), ordered=True)
    return (LAM * x).astype(jnp.bfloat16)

  v = tp.cfg_velocity_fn(model_fn, 5.0)
  x0 = tp.initial_noise(jax.random.PRNGKey(5), (2, 4, 2, 2))
  out = jax.jit(lambda x: tp.euler_sample(v, x, tp.time_grid(6)))(x0)
  jax.block_until_ready(out)
  assert len(counter) == 5  # one batched (cond + uncond) call per step
  assert out.shape == x0.shape and out.dtype == jnp.float32


def test_one_sampler_registry_drives_evaluations_and_cli_choices():
  """A sampler is one entry of SAMPLERS: its evaluations per image and the CLI's
  --method choices follow from it."""
  import argparse  # pylint: disable=import-outside-toplevel
  from showo2_jax.cli import generate  # pylint: disable=import-outside-toplevel
  assert tp.evaluations("euler", 5) == 4 and tp.evaluations("heun", 5) == 8
  assert tp.evaluations("dopri5", 5) is None
  parser = argparse.ArgumentParser()
  generate.add_arguments(parser)
  method = next(a for a in parser._actions if a.dest == "method")  # pylint: disable=protected-access
  assert tuple(method.choices) == tuple(tp.SAMPLERS)
  with pytest.raises(ValueError, match="unknown ODE method"):
    tp.evaluations("rk4", 5)


def test_flow_sampling_rejects_an_unknown_method_before_any_weights_load():
  from showo2_jax.sample.pipeline import FlowSampling  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="unknown ODE method 'rk4'; expected one of euler"):
    FlowSampling(method="rk4")
  assert FlowSampling(method="heun").evaluations() == 2 * 49
