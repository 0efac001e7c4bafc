"""Flow-matching transport of Show-o2 as pure JAX functions (spec section 5).

Conventions, shared with the original so that released weights sample correctly:
- t = 1 is clean data and t = 0 is pure noise. The model predicts the velocity
  dx/dt = x1 - x0, which points from noise to data; sampling integrates t: 0 -> 1.
- Every time value is a per-sample float32 vector; a velocity function has the
  signature `v_fn(x, t_vec) -> velocity` with `t_vec.shape == (x.shape[0],)`.
- The ODE state is float32 whatever the model dtype; velocities are upcast.

Everything here is jit-friendly: shapes depend only on static arguments (the number
of grid points), loops run as `lax.scan` / `lax.while_loop`, and nothing iterates
over batch elements in Python. See docs/transport.md for the deliberate differences
from the original scripts.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
Scalar = Union[float, jax.Array]

# ---------------------------------------------------------------------------------------------
# Linear path (spec 5.1).


def _per_sample(t, ndim: int) -> jax.Array:
  """Reshapes a scalar or (B,) time so that it broadcasts against a (B, ...) tensor."""
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def interpolate(x1: jax.Array, x0: jax.Array, t) -> jax.Array:
  """x_t = t * x1 + (1 - t) * x0: data at t = 1, noise at t = 0.

  t (scalar or one value per sample) is cast to the latent dtype first, as the
  original does (`t.to(x1)`), so bf16 latents interpolate with bf16 times.
  """
  t = _per_sample(t, x1.ndim).astype(x1.dtype)
  return t * x1 + (1 - t) * x0


def target_velocity(x1: jax.Array, x0: jax.Array) -> jax.Array:
  """The regression target of the linear path, independent of t."""
  return x1 - x0


# ---------------------------------------------------------------------------------------------
# Training time sampling (spec 5.2).

# The original's linear map from sequence length to shift: mu(256) = 0.5, mu(4096) = 1.15.
_SHIFT_X1, _SHIFT_Y1, _SHIFT_X2, _SHIFT_Y2 = 256.0, 0.5, 4096.0, 1.15


def resolution_shift_mu(num_tokens):
  """Shift mu for an image of `num_tokens` tokens, *counting the time token*.

  730 (432 px) -> 0.580234, 1025 -> 0.630169, 4097 -> 1.150169.
  """
  m = (_SHIFT_Y2 - _SHIFT_Y1) / (_SHIFT_X2 - _SHIFT_X1)
  b = _SHIFT_Y1 - m * _SHIFT_X1
  return m * num_tokens + b


def shift_time(t: jax.Array, mu: Scalar) -> jax.Array:
  """Applies the resolution shift to the noise level s = 1 - t; returns the shifted t.

  s' = e^mu s / (e^mu s + 1 - s) is the original's e^mu / (e^mu + 1/s - 1) multiplied
  through by s, which removes its division by zero at t = 1 (s = 0): t = 1 maps to
  exactly 1 and t = 0 to exactly 0, with no inf or NaN on the way.
  """
  t = jnp.asarray(t, jnp.float32)
  e = math.exp(mu) if isinstance(mu, (int, float)) else jnp.exp(jnp.asarray(mu, jnp.float32))
  s = 1.0 - t
  s_shifted = e * s / (e * s + t)
  return 1.0 - s_shifted


def bf16_round(x: jax.Array) -> jax.Array:
  """Rounds float32 values to the nearest bfloat16 and returns them as float32."""
  return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)


def sample_train_t(rng: jax.Array, n: int, t0=0.0, shift_mu: Optional[Scalar] = None,
                   round_to_bf16: bool = False) -> jax.Array:
  """Draws n training times (one per image): logit-normal, then the optional shift.

  t = sigmoid(u) * (1 - t0) + t0 with u ~ N(0, 1). t0 (scalar or (n,)) is the lower
  bound before the shift; understanding images use t0 = und_max_t0 (1.0 makes them
  clean: the shift keeps t = 1 exactly). `shift_mu` is `resolution_shift_mu(S)`
  (training configs use do_shift with S = num_t2i_image_tokens) or None for no shift.

  `round_to_bf16=True` returns bf16-rounded times. The original feeds the model
  `t.to(bf16)` (spec quirk 9) but builds x_t with float32 t; to reproduce exactly
  that, keep this False and pass `bf16_round(t)` to the model only.
  """
  u = jax.random.normal(rng, (n,), jnp.float32)
  t0 = jnp.broadcast_to(jnp.asarray(t0, jnp.float32), (n,))
  t = jax.nn.sigmoid(u) * (1.0 - t0) + t0
  if shift_mu is not None:
    t = shift_time(t, shift_mu)
  return bf16_round(t) if round_to_bf16 else t


# ---------------------------------------------------------------------------------------------
# Inference noise and time grid (spec 5.3).


def initial_noise(rng: jax.Array, shape, round_to_bf16: bool = True) -> jax.Array:
  """Standard normal float32 noise; rounded through bf16 as the original's t2i does."""
  z = jax.random.normal(rng, tuple(shape), jnp.float32)
  return bf16_round(z) if round_to_bf16 else z


def _torch_linspace01(n: int) -> np.ndarray:
  """float32 linspace(0, 1, n) with the original's exact values.

  torch fills the first half as fma(step, i, 0) and the second half as
  fma(-step, n - 1 - i, 1) with a float32 step; float64 products of float32 values
  are exact, so one rounding to float32 reproduces the fma bit for bit.
  """
  i = np.arange(n, dtype=np.float64)
  step = np.float64(np.float32(1.0) / np.float32(n - 1))
  low = step * i
  high = 1.0 - step * (n - 1 - i)
  return np.where(i < n // 2, low, high).astype(np.float32)


def time_grid(num_points: int, shifting_factor: Optional[float] = 3.0) -> jax.Array:
  """The inference grid: linspace(0, 1, N) then t / (t + s - s t) (t / (3 - 2t) for s = 3).

  N points give N - 1 solver steps; t = 1 is the last point and, with Euler, is never
  evaluated. s = None or 0 skips the shift (as the original's `if factor:`).
  N = 5, s = 3 -> [0, 0.1, 0.25, 0.5, 1]. There is no resolution shift at inference.
  """
  if num_points < 2:
    raise ValueError(f"time_grid needs at least 2 points (1 step), got {num_points}")
  t = _torch_linspace01(int(num_points))
  if shifting_factor:
    s = np.float32(shifting_factor)
    t = (t / ((t + s) - s * t)).astype(np.float32)
  return jnp.asarray(t)


# ---------------------------------------------------------------------------------------------
# Fixed-grid samplers.


def _velocity(v_fn: VelocityFn, x: jax.Array, t: jax.Array) -> jax.Array:
  """Evaluates v_fn at one time for the whole batch; returns float32."""
  v = v_fn(x, jnp.full((x.shape[0],), t, jnp.float32))
  if v.shape != x.shape:
    raise ValueError(f"velocity shape {v.shape} differs from state shape {x.shape}")
  return v.astype(jnp.float32)


def _scan_grid(step, x0: jax.Array, grid, return_trajectory: bool):
  """Runs `step(x, t, t_next) -> x` over consecutive grid points."""
  x = jnp.asarray(x0).astype(jnp.float32)
  grid = jnp.asarray(grid, jnp.float32)

  def body(x, ts):
    x = step(x, ts[0], ts[1])
    return x, (x if return_trajectory else None)

  x, traj = jax.lax.scan(body, x, (grid[:-1], grid[1:]))
  if return_trajectory:
    return x, jnp.concatenate([x0[None].astype(jnp.float32), traj])
  return x


def euler_sample(v_fn: VelocityFn, x0: jax.Array, grid, return_trajectory: bool = False):
  """Euler on the grid: x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k); N - 1 evaluations.

  This is the original's `odeint(method='euler')`. Returns the final state (float32),
  or (final, trajectory) with the trajectory of shape (N, *x0.shape), x0 first.
  """
  def step(x, t, t_next):
    return x + (t_next - t) * _velocity(v_fn, x, t)
  return _scan_grid(step, x0, grid, return_trajectory)


def heun_sample(v_fn: VelocityFn, x0: jax.Array, grid, return_trajectory: bool = False):
  """Heun (explicit trapezoid, 2nd order) on the grid; 2 (N - 1) evaluations.

  Unlike Euler it evaluates the model at t = 1 (the end of the last step).
  """
  def step(x, t, t_next):
    h = t_next - t
    k1 = _velocity(v_fn, x, t)
    k2 = _velocity(v_fn, x + h * k1, t_next)
    return x + 0.5 * h * (k1 + k2)
  return _scan_grid(step, x0, grid, return_trajectory)


# ---------------------------------------------------------------------------------------------
# Adaptive Dormand-Prince 5(4) (the original's torchdiffeq 'dopri5' option).

# Butcher tableau of Dormand & Prince (1980): nodes, stage weights, 5th-order weights,
# and the difference between the 5th- and embedded 4th-order weights (7 stages, FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


class OdeStats(NamedTuple):
  """Work done by the adaptive solver (int32 scalars)."""
  num_evals: jax.Array
  num_steps: jax.Array  # attempted steps, accepted and rejected
  num_rejected: jax.Array


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def _initial_step(f, t0, x0, f0, atol, rtol, span):
  """Hairer-Norsett-Wanner's starting step heuristic; costs one evaluation.

  The probe step stays inside [t0, t0 + span]: the model never saw t > 1.
  """
  scale = atol + rtol * jnp.abs(x0)
  d0, d1 = _rms(x0 / scale), _rms(f0 / scale)
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
  h0 = jnp.minimum(h0, span)
  f1 = f(x0 + h0 * f0, t0 + h0)
  d2 = _rms((f1 - f0) / scale) / h0
  h1 = jnp.where(jnp.maximum(d1, d2) <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(d1, d2)) ** (1 / 5))
  return jnp.minimum(100 * h0, h1)


def _dopri5_step(f, t, x, k1, h):
  """One trial step; returns (x_new, k7 = f(x_new, t + h), error estimate)."""
  ks = [k1]
  for c, a in zip(_DP_C[1:], _DP_A[1:]):
    ks.append(f(x + h * sum(a_j * k_j for a_j, k_j in zip(a, ks)), t + c * h))
  x_new = x + h * sum(b * k for b, k in zip(_DP_B, ks) if b)
  k7 = f(x_new, t + h)
  err = h * sum(e * k for e, k in zip(_DP_E, ks + [k7]) if e)
  return x_new, k7, err


def dopri5_sample(v_fn: VelocityFn, x0: jax.Array, grid, atol: float = 1e-6, rtol: float = 1e-3,
                  max_steps: int = 10_000, safety: float = 0.9, return_trajectory: bool = False,
                  return_stats: bool = False):
  """Adaptive Dormand-Prince 5(4) from grid[0] to grid[-1], passing through every grid point.

  One step size for the whole batch, accepted when the RMS over all elements of
  err / (atol + rtol * max(|x|, |x_new|)) is <= 1 (as torchdiffeq). Steps are clipped
  to land on grid points (torchdiffeq interpolates instead), so the trajectory is
  exact there. `max_steps` bounds the attempted steps overall; if it is hit the
  result is not at grid[-1]: check `num_steps` in the stats.

  Returns final, (final, trajectory), (final, stats) or (final, trajectory, stats).
  """
  x = jnp.asarray(x0).astype(jnp.float32)
  grid = jnp.asarray(grid, jnp.float32)
  f = lambda y, t: _velocity(v_fn, y, t)

  k1 = f(x, grid[0])
  span = grid[-1] - grid[0]
  h = jnp.minimum(_initial_step(f, grid[0], x, k1, atol, rtol, span), span)
  zero = jnp.zeros((), jnp.int32)

  def interval(carry, t_end):
    def cond(c):
      t, _, _, _, steps, _ = c
      return (t < t_end) & (steps < max_steps)

    def body(c):
      t, x, k1, h, steps, rejected = c
      h_try = jnp.minimum(h, t_end - t)
      clipped = h_try < h
      x_new, k7, err = _dopri5_step(f, t, x, k1, h_try)
      scale = atol + rtol * jnp.maximum(jnp.abs(x), jnp.abs(x_new))
      ratio = _rms(err / scale)
      accept = ratio <= 1.0
      factor = jnp.clip(safety * ratio ** (-1 / 5), 0.2, 10.0)
      h_next = h_try * factor
      # A step shortened only to hit the grid point says nothing against the longer one.
      h_next = jnp.where(accept & clipped, jnp.maximum(h, h_next), h_next)
      t = jnp.where(accept, jnp.where(clipped | (t + h_try >= t_end), t_end, t + h_try), t)
      x = jnp.where(accept, x_new, x)
      k1 = jnp.where(accept, k7, k1)
      return t, x, k1, h_next, steps + 1, rejected + (~accept).astype(jnp.int32)

    t_start, x, k1, h, steps, rejected = carry
    t, x, k1, h, steps, rejected = jax.lax.while_loop(
        cond, body, (t_start, x, k1, h, steps, rejected))
    return (t, x, k1, h, steps, rejected), (x if return_trajectory else None)

  (_, x, _, _, steps, rejected), traj = jax.lax.scan(
      interval, (grid[0], x, k1, h, zero, zero), grid[1:])
  out = (x,)
  if return_trajectory:
    out += (jnp.concatenate([x0[None].astype(jnp.float32), traj]),)
  if return_stats:
    out += (OdeStats(num_evals=2 + 6 * steps, num_steps=steps, num_rejected=rejected),)
  return out[0] if len(out) == 1 else out


class Sampler(NamedTuple):
  """One ODE sampler: `fn(v_fn, x0, grid, **kwargs)`, and the model evaluations it makes
  per grid interval (None: adaptive, counted by the solver)."""
  fn: Callable
  evals_per_interval: Optional[int]


# The one sampler registry: `sample_ode`, the inference pipeline's progress bars and the
# CLI's `--method` choices are all derived from it. A new sampler is one entry here.
SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler(euler_sample, 1),
    "heun": Sampler(heun_sample, 2),
    "dopri5": Sampler(dopri5_sample, None),
}


def evaluations(method: str, num_steps: int) -> Optional[int]:
  """Model evaluations of sampler `method` over a grid of `num_steps` points (None: adaptive)."""
  per = _sampler(method).evals_per_interval
  return None if per is None else per * (num_steps - 1)


def _sampler(method: str) -> Sampler:
  if method not in SAMPLERS:
    raise ValueError(f"unknown ODE method '{method}'; expected one of {', '.join(SAMPLERS)}")
  return SAMPLERS[method]


def sample_ode(v_fn: VelocityFn, x0: jax.Array, grid, method: str = "euler", **kwargs):
  """Dispatches to the sampler `method` of `SAMPLERS` (euler, heun, dopri5, ...)."""
  return _sampler(method).fn(v_fn, x0, grid, **kwargs)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance (spec 5.4).


def cfg_combine(v_cond: jax.Array, v_uncond: jax.Array, scale: Scalar,
                dtype=jnp.bfloat16) -> jax.Array:
  """v_u + g (v_c - v_u), each operation rounded to `dtype` (None: the inputs' dtype).

  The original computes this on bf16 model outputs with a Python-float g; PyTorch
  rounds after the subtraction, the product and the sum, and multiplies by g in
  float32 (g itself is not rounded to bf16). Computing in float32 with explicit
  rounding reproduces that bit for bit, under jit too. Returns `dtype`.
  """
  if dtype is None:
    dtype = jnp.result_type(v_cond, v_uncond)
  rnd = lambda a: a.astype(dtype).astype(jnp.float32)
  v_c, v_u = rnd(v_cond), rnd(v_uncond)
  diff = rnd(v_c - v_u)
  guided = rnd(jnp.asarray(scale, jnp.float32) * diff)
  return (v_u + guided).astype(dtype)


def is_static_zero(scale) -> bool:
  """True for a Python 0 guidance scale: `cfg_velocity_fn` then calls the model unbatched."""
  return isinstance(scale, (int, float)) and scale == 0


def cfg_velocity_fn(model_fn: VelocityFn, scale: Scalar, dtype=jnp.bfloat16) -> VelocityFn:
  """Wraps a model velocity into the guided velocity of the cond rows.

  With g != 0, `model_fn` must be built over the [cond; uncond] conditioning (2B rows):
  the returned fn feeds it [x; x] and [t; t] in one batch and combines the halves with
  `cfg_combine`. The original instead carries a [v; v] state of 2B rows; both halves
  stay identical, so keeping B rows gives the same trajectory at half the state.

  With g == 0 (a Python 0, static) `model_fn` is called as is: build it over the cond
  rows only. The original still doubled the batch and halved the result (spec quirk 12).
  """
  if is_static_zero(scale):
    return model_fn

  def guided(x, t):
    n = x.shape[0]
    v = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    return cfg_combine(v[:n], v[n:], scale, dtype)

  return guided
