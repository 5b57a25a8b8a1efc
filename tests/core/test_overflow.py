"""Overflow: no step is longer than NAdam's own bound, whatever the gradients.

A gradient is cut only where v_t would overflow its dtype, and a step only
where it exceeds NAdam's bound (`optax_nadam._bounds`, Cauchy-Schwarz on the
formulas) by more than rounding;
here it is recomputed in float64 numpy from the formulas alone, checked to be
attained (so it is the formula's own, not a looser number), and checked
against every step of the sequences of issue 18 and of hypothesis-drawn
sequences of finite gradients of every magnitude.
"""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_nadam import _bounds, scale_by_nadam


def _f32(x):
  return float(np.float32(x))


def bound64(t, b1, b2, psi=0.004):
  """The largest |update| of the formulas at step t (eps = 0), in float64."""
  b1, b2, psi = _f32(b1), _f32(b2), _f32(psi)  # the betas the float32 EMAs use
  mu = [b1 * (1 - 0.5 * 0.96 ** (psi * i)) for i in range(1, t + 2)]
  prod_t = math.prod(mu[:t])
  coef_g = (1 - mu[t - 1]) / (1 - prod_t)
  coef_m = mu[t] / (1 - prod_t * mu[t])
  w = [coef_g + coef_m * (1 - b1)] + [coef_m * (1 - b1) * b1**k for k in range(1, t)]
  return math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(sum(wk**2 / b2**k for k, wk in enumerate(w)))


def _updates(dtype, gradients, **hp):
  """|update| after each gradient, one coordinate, in float64."""
  tx = scale_by_nadam(**hp)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros((1,), dtype))
  out = []
  for g in gradients:
    u, state = update(jnp.asarray([g], dtype), state)
    out.append(float(np.abs(np.asarray(u, np.float64))[0]))
  return np.array(out)


def _formula(gradients, b1=0.9, b2=0.999, eps=1e-7, psi=0.004):
  """|update| of the formulas in float64 (no saturation: float64 holds 1e60)."""
  m = v = prod = 0.0
  prod = 1.0
  out = []
  for t, g in enumerate(gradients, start=1):
    mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
    mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
    prod *= mu
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_bar = (1 - mu) * g / (1 - prod) + mu_next * m / (1 - prod * mu_next)
    out.append(abs(m_bar / (math.sqrt(v / (1 - b2**t)) + eps)))
  return np.array(out)


def _assert_within_bound(steps, b1=0.9, b2=0.999, psi=0.004, rtol=1e-5):
  # rtol: the float32 rounding of the bound, or the update's own dtype rounding.
  for t, s in enumerate(steps, start=1):
    assert np.isfinite(s) and s <= bound64(t, b1, b2, psi) * (1 + rtol), (t, s)


def test_the_bound_is_attained_so_it_is_the_formulas_own():
  # g_{t-k} proportional to w_k / b2^k makes Cauchy-Schwarz an equality.
  b1, b2, t = 0.9, 0.999, 30
  mu = [b1 * (1 - 0.5 * 0.96 ** (0.004 * i)) for i in range(1, t + 2)]
  prod_t = math.prod(mu[:t])
  coef_m = mu[t] / (1 - prod_t * mu[t])
  coef_g = (1 - mu[t - 1]) / (1 - prod_t)
  w = [coef_g + coef_m * (1 - b1)] + [coef_m * (1 - b1) * b1**k for k in range(1, t)]
  gradients = [w[t - i] / b2 ** (t - i) for i in range(1, t + 1)]
  steps = _updates(jnp.float32, gradients, b1=b1, b2=b2, eps=0.0)
  np.testing.assert_allclose(steps[-1], bound64(t, b1, b2), rtol=1e-5)
  # (bound64 takes the float32-rounded betas: 1e-7 from the exact ones)
  np.testing.assert_allclose(_formula(gradients, eps=0.0)[-1], bound64(t, b1, b2), rtol=1e-6)


def test_issue_sequences_stay_within_the_bound():
  # The sequences of issue 18, before: 1.8e9, 1.7e10 (10 lr 200 steps after),
  # 1.8e9 and 119 times the learning rate (v saturated; the peers freeze instead).
  first = _updates(jnp.float32, [1e30])
  print(f"\nfloat32 g = 1e30: first step {first[0]:.3g} lr (formula {_formula([1e30])[0]:.3g})")
  _assert_within_bound(first)
  np.testing.assert_allclose(first[0], _formula([1e30])[0], rtol=1e-5)
  seq = [1e30] * 100 + [1.0] * 200
  steps, formula = _updates(jnp.float32, seq), _formula(seq)
  print(f"float32 100 x 1e30 then 200 x 1: largest {steps.max():.3g} lr, largest after the "
        f"switch {steps[100:].max():.3g}, last {steps[-1]:.3g} (formula {formula[-1]:.3g})")
  _assert_within_bound(steps)
  # The formulas' v (1e57) cannot be stored: v holds float32's largest value, m the
  # gradients cut to sqrt(max / (1 - b2)), the steps are cut to the bound while m is
  # too large for the saturated v, and come back down with the formulas'.
  print(f"last step / the formulas' {steps[-1] / formula[-1]:.3g}")
  assert formula[-1] / 30 < steps[-1] < 30 * formula[-1]
  bf16 = _updates(jnp.bfloat16, [1e30])
  print(f"bfloat16 g = 1e30: first step {bf16[0]:.3g} lr")
  _assert_within_bound(bf16, rtol=2.0**-8)
  f16 = _updates(jnp.float16, [6e4] * 300)
  print(f"float16 g = 6e4 (cut to 128; uncut, v would saturate at 65504): largest step "
        f"{f16.max():.3g} lr")
  _assert_within_bound(f16, rtol=2.0**-11)


_MAGNITUDES = [0.0, 1e-45, 1e-40, 1e-30, 1e-19, 1e-3, 1.0, 1e3, 1e19, 1e30, 3.4e38]


@pytest.mark.slow  # 6 s: a compilation per drawn dtype and hyperparameters
@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    b1=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    b2=st.sampled_from([0.5, 0.9, 0.999, 0.9999]),
    eps=st.sampled_from([0.0, 1e-8, 1e-3]),
    gradients=st.lists(st.tuples(st.sampled_from(_MAGNITUDES), st.sampled_from([1.0, -1.0])),
                       min_size=1, max_size=12))
def test_every_step_of_every_finite_sequence_is_within_the_bound(dtype, b1, b2, eps, gradients):
  finfo_max = float(jnp.finfo(dtype).max)
  seq = [min(a, finfo_max) * s for a, s in gradients]  # finite in the params' dtype
  steps = _updates(jnp.dtype(dtype), seq, b1=b1, b2=b2, eps=eps)
  for t, step in enumerate(steps, start=1):
    bound = bound64(t, b1, b2) if b1 * b1 < b2 or t < 40 else math.inf
    assert np.isfinite(step), (t, step)
    rtol = max(1e-5, float(jnp.finfo(dtype).eps))  # the update is rounded to the dtype
    assert step <= min(bound, 2.0**63) * (1 + rtol), (t, step, bound)


# --- where the step cut is compiled in -------------------------------------------

def _needed(dtype="float32", m_dtype=None, b1=0.9, b2=0.999, eps=1e-7, eps_root=0.0,
            compute="float32", v_dtype=None):
  f = lambda x: None if x is None else float(np.float32(x))  # noqa: E731
  return _bounds.step_cut_needed(jnp.dtype(compute), jnp.dtype(m_dtype or dtype),
                                 jnp.dtype(v_dtype or dtype), f(b1), f(b2), f(eps), f(eps_root))


def test_the_step_cut_is_compiled_in_wherever_the_state_can_leave_the_bound():
  # v can saturate wherever gradients as wide as the compute dtype meet v's range (then
  # m can exceed what v allows): float32 and float64 state, bfloat16 and float16 too.
  assert _needed() and _needed("bfloat16") and _needed("float16")
  assert _bounds.v_can_overflow(jnp.float32, jnp.float32)
  assert not _bounds.v_can_overflow(jnp.float16, jnp.float32)
  # The derivation's rule (flush to zero, rounding) where v cannot overflow: float32
  # v with a compute dtype whose range v holds (float16 compute, as a bound check).
  assert not _bounds.v_can_overflow(jnp.float16, jnp.float64)

  def ops(tx, dtype):
    params = [jnp.ones((64,), dtype)]
    return jax.jit(tx.update).lower(params, tx.init(params)).compile().as_text()

  step_clip = lambda text: ("minimum(" in text) and ("maximum(" in text)  # noqa: E731
  assert step_clip(ops(scale_by_nadam(), jnp.float32))
  assert step_clip(ops(scale_by_nadam(), jnp.bfloat16))


def _attaining(t_end, b1, b2, psi=0.004):
  """The gradients that make step `t_end` equal the bound (Cauchy-Schwarz equality)."""
  mu = [b1 * (1 - 0.5 * 0.96 ** (psi * i)) for i in range(1, t_end + 2)]
  prod_t = math.prod(mu[:t_end])
  coef_m = mu[t_end] / (1 - prod_t * mu[t_end])
  coef_g = (1 - mu[t_end - 1]) / (1 - prod_t)
  w = [coef_g + coef_m * (1 - b1)] + [coef_m * (1 - b1) * b1**k for k in range(1, t_end)]
  return [w[t_end - i] / b2 ** (t_end - i) for i in range(1, t_end + 1)]


@pytest.mark.slow  # 20 s: one compilation per configuration
@pytest.mark.parametrize("b1,b2,eps", [(0.9, 0.999, 1e-7), (0.9, 0.999, 1e-8), (0.99, 0.999, 1e-7),
                                       (0.5, 0.5, 1e-8), (0.0, 0.9, 1e-3), (0.9, 0.9999, 1e-7)])
def test_float32_steps_stay_within_the_bound_to_rounding(b1, b2, eps):
  # (The step cut, compiled in for float32 state, clips at bound * (1 + 64 u) only.) 64
  # coordinates, 60 steps, each column
  # the attaining sequence of one end step (scaled by 1e-30 to 1e18, so that v flushes
  # to 0 where it can) or a drifting random one of magnitudes 1e-38 to 1e4.
  rng = np.random.default_rng(0)
  t = 60
  cols = [np.pad(_attaining(end, b1, b2), (0, t - end)) * scale
          for end in (1, 2, 5, 10, 30, 60) for scale in (1e-30, 1e-20, 1.0, 1e18)]
  while len(cols) < 64:
    cols.append(rng.standard_normal(t) * 10.0 ** rng.uniform(-38, 4, t) + rng.uniform(-1, 1))
  grads = np.clip(np.stack(cols, 1), -3.4e38, 3.4e38)
  tx = scale_by_nadam(b1=b1, b2=b2, eps=eps)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros((64,), jnp.float32))
  worst = 0.0
  for step, g in enumerate(grads, start=1):
    u, state = update(jnp.asarray(g, jnp.float32), state)
    bound = bound64(step, b1, b2) if b1 * b1 < b2 or step < 40 else math.inf
    u = np.abs(np.asarray(u, np.float64))
    assert np.all(np.isfinite(u)), step
    worst = max(worst, float(u.max() / min(bound, 2.0**63)))
  print(f"\nb1={b1} b2={b2} eps={eps}: largest step / bound {worst:.9f}")
  # The derivation's rounding term, O(u / (1 - b1^2 / b2)): 1e-5 covers b1 = 0.99.
  assert worst <= 1 + 1e-5


@pytest.mark.parametrize("v_dtype", ["float32", "bfloat16", "float16"])
def test_fit_v_acts_only_where_v_would_overflow(v_dtype):
  # Where b2 v + (1 - b2) g^2 fits v's dtype, g and v_t are the formulas' bit for bit;
  # elsewhere v_t is the dtype's largest value V, and g is cut only where its own term
  # (1 - b2) g^2 exceeds V (to sqrt(V / (1 - b2))).
  big = float(jnp.finfo(v_dtype).max)
  b2, omb2 = np.float32(0.999), np.float32(1 - np.float64(np.float32(0.999)))
  rng = np.random.default_rng(1)
  n = 4000
  # Normal float32 results only (XLA flushes subnormals, numpy does not).
  g = (10.0 ** rng.uniform(-15, 38.5, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
  v = np.minimum(10.0 ** rng.uniform(-34, 38.6, n), big).astype(np.float32)
  v = np.asarray(jnp.asarray(v).astype(v_dtype).astype(jnp.float32))
  g_c, v_t = (np.asarray(x) for x in _bounds.fit_v(
      jnp.asarray(g), jnp.asarray(b2 * v), jnp.asarray(omb2), jnp.dtype(v_dtype),
      jnp.dtype(jnp.float32)))
  with np.errstate(over="ignore"):
    formula = b2 * v + (omb2 * g) * g  # float32, as numpy rounds it
    own = (omb2 * g) * g
  fits = np.isfinite(formula) & (formula <= big)
  cut = ~(np.isfinite(own) & (own <= big))
  assert fits.any() and cut.any()
  np.testing.assert_array_equal(g_c[fits], g[fits])
  np.testing.assert_array_equal(v_t[fits], formula[fits])
  np.testing.assert_array_equal(g_c[~cut], g[~cut])
  np.testing.assert_allclose(v_t[~fits], big, rtol=1e-6)  # V (or the sum, to rounding)
  assert np.all(v_t <= np.float32(big))
  np.testing.assert_allclose(np.abs(g_c[cut]), np.sqrt(big / np.float64(omb2)), rtol=1e-6)
  assert np.all(np.sign(g_c[cut]) == np.sign(g[cut]))
  # Non-finite gradients: NaN stays NaN everywhere; inf gives a NaN g (m, the update)
  # and v = V.
  g_c, v_t = _bounds.fit_v(jnp.asarray([np.nan, np.inf, -np.inf], jnp.float32),
                           jnp.zeros(3), jnp.asarray(omb2), jnp.dtype(v_dtype),
                           jnp.dtype(jnp.float32))
  assert np.all(np.isnan(np.asarray(g_c))) and np.isnan(np.asarray(v_t)[0])
  np.testing.assert_allclose(np.asarray(v_t)[1:], big, rtol=1e-6)
