"""The guards of NAdam's step: each acts only where the formulas cannot be computed (private).

- `fit_v`: where ``v_t = b2 v + (1 - b2) |g|^2`` would overflow the dtype ``v`` is
  stored in, ``v_t`` is that dtype's largest value (and a gradient whose own term
  overflows is cut to fit it); the step cut then keeps the step within the bound.
- `saturate`: where ``m_t`` would overflow a narrower ``mu_dtype``, the stored ``m``
  is that dtype's largest value (the step itself uses the computed ``m_t``).
- `cut_step`: a step longer than NAdam's own bound (`step_bound`) by more than
  rounding is cut to it; `step_cut_needed` says where that can happen at all.

Derivations and measurements: docs/reliability.md#overflow-and-the-steps-bound.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# No direction is longer than this: a learning rate up to sqrt(float32 max) ~ 2**64 times
# it is at most 2**127, finite in float32.
MAX_STEP = 2.0**63
# The step cut acts beyond bound * (1 + STEP_SLACK * u), u the compute dtype's unit
# roundoff: the update and the bound at t = 1 (where any gradient attains the bound when
# eps << |g|) each carry a few roundings, and float32 state stays within 3 u of the bound
# (docs/reliability.md); inside the slack the update, and its derivative, are untouched.
STEP_SLACK = 64


def step_bound(t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2, log_b1, log_r):
  """NAdam's own attained bound on ``|update|`` at step `t` (Cauchy-Schwarz on the formulas).

  ``sqrt((1 - b2^t) / (1 - b2)) sqrt(w_0^2 + (coef_m (1 - b1))^2 S)`` with ``w_0 =
  coef_g + coef_m (1 - b1)``, ``S = sum_{k=1}^{t-1} (b1^2 / b2)^k``; capped at
  `MAX_STEP` (also where it is NaN: b1 = b2 = 0). Not differentiated.

  Args:
    t: the step, 1 for the first update, in the scalar dtype.
    coef_g, coef_m: the weights of ``g`` and ``m_t`` in ``m_bar``.
    one_minus_b1, one_minus_b2: ``1 - b1``, ``1 - b2``.
    bias_2: ``1 - b2^t``.
    log_b1: ``log(b1)`` (``-inf`` for b1 = 0).
    log_r: ``log(b1^2 / b2)``.

  Returns:
    The bound, a scalar of `coef_g`'s dtype.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; Kingma & Ba, 2015,
    "Adam", section 2.1.
  """
  dtype = jnp.result_type(coef_g)

  def const(x):  # in `dtype`: a Python float in jnp.where is float64 under x64
    return jnp.asarray(x, dtype)

  n = t - 1.0
  log_r = jnp.minimum(log_r, 80.0)  # r > e^80: S overflows and the cap applies
  r = jnp.exp(log_r)
  safe_log_r = jnp.where(log_r == 0, const(1.0), log_r)
  geometric = r * jnp.expm1(n * safe_log_r) / jnp.expm1(safe_log_r)
  sum_r = jnp.where(n <= 0, const(0.0), jnp.where(log_r == 0, n, geometric))
  sum_r = jnp.where(log_b1 == -jnp.inf, const(0.0), sum_r)  # b1 = 0: no history
  w_m = coef_m * one_minus_b1
  w_g = coef_g + w_m
  bound = jnp.sqrt(bias_2 / one_minus_b2) * jnp.sqrt(w_g * w_g + w_m * w_m * sum_r)
  bound = jnp.where(bound < MAX_STEP, bound, const(MAX_STEP))
  return jax.lax.stop_gradient(bound.astype(dtype))


def _abs2(x):
  return x.real * x.real + x.imag * x.imag if jnp.iscomplexobj(x) else x * x


def v_can_overflow(g_dtype, v_dtype) -> bool:
  """Whether ``b2 v + (1 - b2) g^2`` can exceed `v_dtype`'s range for a `g_dtype` gradient."""
  return float(jnp.finfo(g_dtype).max) > math.sqrt(float(jnp.finfo(v_dtype).max))


def fit_v(g, b2_v, one_minus_b2, v_dtype, g_dtype):
  """``(g_m, v_t)``: the formulas' ``g`` and ``v_t``, except where ``v_t`` overflows `v_dtype`.

  ``(1 - b2) g^2`` is formed as ``((1 - b2) g) g``. With ``V`` the largest value of
  `v_dtype`: where ``(1 - b2) g^2 > V`` (then ``v_t > V`` whatever ``v``), ``|g|`` is
  cut to ``sqrt(V / (1 - b2))``; where ``v_t > V``, ``v_t = V``. Both depend on the
  gradient alone or on ``v_t`` alone: a cut that reads ``v`` makes XLA:CPU materialize
  intermediates (3.3x the step time measured). An infinite ``g`` gives a NaN ``g_m``
  (so NaN ``m`` and update, as in every peer) and ``v_t = V``; NaN stays NaN.

  Args:
    g: the gradient, in the compute dtype.
    b2_v: ``b2 * v`` in the compute dtype (real).
    one_minus_b2: ``1 - b2``.
    v_dtype: the dtype ``v`` is stored in.
    g_dtype: the gradient's own dtype (no guard where it cannot overflow ``v``).

  Returns:
    ``(g_m, v_t)`` in the compute dtype: the gradient for ``m`` and the step, and ``v_t``.
  """
  if not v_can_overflow(g_dtype, v_dtype):
    if jnp.iscomplexobj(g):
      return g, b2_v + (one_minus_b2 * g.real * g.real + one_minus_b2 * g.imag * g.imag)
    return g, b2_v + (one_minus_b2 * g) * g
  v_max = jnp.asarray(float(jnp.finfo(v_dtype).max), b2_v.dtype)
  limit = jnp.sqrt(v_max) * jax.lax.rsqrt(one_minus_b2)
  if jnp.iscomplexobj(g):
    re, im = jnp.clip(g.real, -limit, limit), jnp.clip(g.imag, -limit, limit)
    g_cut = jax.lax.complex(re, im)
    v_t = b2_v + (one_minus_b2 * re * re + one_minus_b2 * im * im)
  else:
    g_cut = jnp.clip(g, -limit, limit)
    v_t = b2_v + (one_minus_b2 * g_cut) * g_cut
  # 0 * inf = NaN: an infinite g stays non-finite in m and the step (v takes V).
  return g_cut + 0.0 * g, jnp.where(v_t > v_max, v_max, v_t)


def saturate(m_t, m_dtype):
  """`m_t` with its magnitude (each part's) cut to `m_dtype`'s largest value.

  Only where `m_dtype` holds a narrower range than `m_t`'s gradients can reach; the
  stored ``m`` then shrinks toward 0, which only shortens later steps.
  """
  real = m_t.real.dtype
  m_max = jnp.asarray(float(jnp.finfo(m_dtype).max), real)  # typed: no float64 under x64
  if jnp.iscomplexobj(m_t):
    return jax.lax.complex(jnp.clip(m_t.real, -m_max, m_max), jnp.clip(m_t.imag, -m_max, m_max))
  return jnp.clip(m_t, -m_max, m_max)


def step_cut_needed(compute_dtype, m_dtype, v_dtype, b1, b2, eps, eps_root) -> bool:
  """Whether a step can leave NAdam's bound by more than rounding (else no cut is compiled).

  True wherever ``v`` can saturate (gradients as wide as the compute dtype reach
  ``v``'s range: then ``m`` can exceed what ``v`` allows). Otherwise False only for
  state stored as precisely as it is computed, concrete hyperparameters, and
  ``max(eps, sqrt(eps_root))`` large enough that the flush of tiny values to zero
  stays below the unit roundoff (docs/reliability.md#overflow-and-the-steps-bound).

  Args:
    compute_dtype: the dtype the leaf is computed in (float32 or float64).
    m_dtype, v_dtype: the dtypes ``m`` and ``v`` are stored in.
    b1, b2, eps, eps_root: Python floats, or None when traced.

  Returns:
    True where the cut must stay.
  """
  real = jnp.finfo(compute_dtype)
  if v_can_overflow(compute_dtype, v_dtype):  # a saturated v no longer matches m
    return True
  if any(jnp.finfo(d).nmant < real.nmant for d in (m_dtype, v_dtype)):
    return True
  if any(x is None for x in (b1, b2, eps, eps_root)):
    return True
  b1, b2, eps, eps_root = (float(real.dtype.type(x)) for x in (b1, b2, eps, eps_root))
  tiny, u = float(real.tiny), float(real.eps) / 2
  d = math.sqrt(3.0 * tiny) / (1.0 - b2)
  e = (3.0 * tiny / (1.0 - b1) ** 2 + 2.0 * tiny) / (1.0 - b1)
  return max(eps, math.sqrt(eps_root)) < (d + e) / u


def cut_step(update, bound):
  """`update` cut to `bound` where its magnitude exceeds ``bound (1 + STEP_SLACK u)``.

  Clipping at the slackened bound leaves every step within rounding of the bound,
  and its derivative, untouched; beyond it the step is at most the slackened bound.
  NaN stays NaN; a complex step is cut part by part, then in magnitude.
  """
  u = float(jnp.finfo(update.dtype).eps) / 2
  limit = bound * np.float64(1.0 + STEP_SLACK * u).astype(bound.dtype)
  if not jnp.iscomplexobj(update):
    return jnp.clip(update, -limit, limit)
  update = jax.lax.complex(jnp.clip(update.real, -limit, limit),
                           jnp.clip(update.imag, -limit, limit))
  size = jnp.abs(update)
  safe = jnp.where(size > limit, size, jnp.ones_like(size))  # typed: no float64 under x64
  return jnp.where(size > limit, update * (limit / safe), update)
