"""NAdam's own bounds on the step and on m, and the cut to them (private).

What keeps a step finite and no longer than the formula allows when float32
(or float16, bfloat16) cannot hold the second moment: ``v`` saturates at its
dtype's largest value instead of becoming infinite, ``m`` is cut to the
largest value the formula allows next to that ``v``, and every step is cut to
the largest step the formula can give (`bounds`). Without a saturated ``v`` the
cuts change nothing: the formula never exceeds its own bound.
"""

import jax
import jax.numpy as jnp

# No update is longer than this (times the learning rate): 2**63 ~ 9.2e18, so that a
# learning rate in its range [0, sqrt(float32 max) ~ 2**64] times a step is at most
# 2**127, finite in float32 (powers of two: no rounding at the edge).
MAX_STEP = 2.0**63


def bounds(t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2, log_b1, log_r):
  """NAdam's own bounds at step `t`: ``(step_bound, m_bound)``.

  With zero initial moments, ``m_t = (1 - b1) sum_k b1^k g_{t-k}``, ``v_t =
  (1 - b2) sum_k b2^k g_{t-k}^2`` and ``m_bar = sum_k w_k g_{t-k}`` with
  ``w_0 = coef_g + coef_m (1 - b1)``, ``w_k = coef_m (1 - b1) b1^k``.
  Cauchy-Schwarz (``w_k g_{t-k} = (w_k / sqrt(b2^k)) (sqrt(b2^k) g_{t-k})``)
  gives, with ``r = b1^2 / b2`` and ``S = sum_{k=1}^{t-1} r^k``::

    |m_bar| / sqrt(v_t / (1 - b2^t))
        <= sqrt((1 - b2^t) / (1 - b2)) sqrt(w_0^2 + (coef_m (1 - b1))^2 S)
    |m_t| <= (1 - b1) sqrt((1 + S) / (1 - b2)) sqrt(v_t)

  with equality for ``g_{t-k}`` proportional to ``w_k / b2^k`` (resp.
  ``(b1 / b2)^k``): the bounds are attained, so they are the formula's own.
  eps > 0 and eps_root > 0 only shorten the step. ``step_bound`` is capped at
  `MAX_STEP`; degenerate betas whose bound is NaN (b1 = b2 = 0) take the cap,
  and an infinite ``m_bound`` cuts nothing. Not differentiated: they only cut
  off overflow.

  Args:
    t: the step, 1 for the first update, in the scalar dtype.
    coef_g: ``(1 - mu_t) / (1 - prod_t)``, the weight of ``g`` in ``m_bar``.
    coef_m: ``mu_{t+1} / (1 - prod_t mu_{t+1})``, the weight of ``m_t``.
    one_minus_b1: ``1 - b1``.
    one_minus_b2: ``1 - b2``.
    bias_2: ``1 - b2^t``.
    log_b1: ``log(b1)`` (``-inf`` for b1 = 0).
    log_r: ``log(b1^2 / b2)``.

  Returns:
    ``(step_bound, m_bound)``, scalars of `coef_g`'s dtype; ``m_bound`` is
    the factor of ``sqrt(v_t)``.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; Kingma & Ba,
    2015, "Adam", section 2.1 (the bound on Adam's step).
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
  step_bound = jnp.sqrt(bias_2 / one_minus_b2) * jnp.sqrt(w_g * w_g + w_m * w_m * sum_r)
  step_bound = jnp.where(step_bound < MAX_STEP, step_bound, const(MAX_STEP))
  m_bound = one_minus_b1 * jnp.sqrt((1.0 + sum_r) / one_minus_b2)
  m_bound = jnp.where(m_bound < jnp.inf, m_bound, const(jnp.inf))
  return (jax.lax.stop_gradient(step_bound.astype(dtype)),
          jax.lax.stop_gradient(m_bound.astype(dtype)))


def clip_magnitude(x, bound, m_t):
  """`x` with every element's magnitude cut to `bound`.

  ``+ 0 * m_t`` keeps a non-finite gradient or first moment visible: an
  infinite one gives NaN, not a cut finite value (``m_t`` is finite whenever
  ``m`` and ``g`` are: its weights sum to 1).

  Args:
    x: the elements to cut (real or complex).
    bound: a non-negative scalar.
    m_t: the first moment the elements come from.

  Returns:
    `x` cut to ``[-bound, bound]`` (complex: parts first, then the magnitude).
  """
  if not jnp.iscomplexobj(x):
    return jnp.clip(x, -bound, bound) + 0.0 * m_t
  # Parts first (an infinite part would make |x| infinite and x / |x| NaN).
  x = jax.lax.complex(jnp.clip(x.real, -bound, bound), jnp.clip(x.imag, -bound, bound))
  size = jnp.abs(x)
  return jnp.where(size > bound, x * (bound / size), x) + 0.0 * m_t
