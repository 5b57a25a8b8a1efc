"""NAdam's own bound on the step, and the cuts that keep every step within it (private).

What keeps a step finite and no longer than the formulas allow when float32
(or float16, bfloat16) cannot hold the second moment. Two cuts:

- `cut_gradient`: each gradient element is cut to ``sqrt(max) / 2`` of the
  dtype ``v`` is stored in (9.2e18 for float32 and bfloat16, 128 for
  float16), the largest magnitude whose square the EMA ``v`` holds with room
  to spare (``v <= max / 4``). ``m`` and ``v`` are then the formulas' for the
  cut gradients: consistent with each other, never saturated, and once the
  gradients come back down the steps shrink as the formulas' do. The peers
  instead store ``v = inf`` and the coordinate never moves again.
- `cut_step`: every step is cut to `step_bound`, the largest step the formulas
  can give at step ``t``. For a state reached from zero moments by (cut)
  gradients this changes nothing but rounding; it acts where the stored state
  is not one the formulas reach (``v`` flushed to 0 in float16 storage while
  ``m`` was not, a state imported from elsewhere).
"""

import math

import jax
import jax.numpy as jnp

# No update is longer than this (times the learning rate): 2**63 ~ 9.2e18, so that a
# learning rate in its range [0, sqrt(float32 max) ~ 2**64] times a step is at most
# 2**127, finite in float32 (powers of two: no rounding at the edge).
MAX_STEP = 2.0**63


def step_bound(t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2, log_b1, log_r):
  """NAdam's own bound on ``|update|`` at step `t`.

  With zero initial moments, ``m_t = (1 - b1) sum_k b1^k g_{t-k}``, ``v_t =
  (1 - b2) sum_k b2^k g_{t-k}^2`` and ``m_bar = sum_k w_k g_{t-k}`` with
  ``w_0 = coef_g + coef_m (1 - b1)``, ``w_k = coef_m (1 - b1) b1^k``.
  Cauchy-Schwarz (``w_k g_{t-k} = (w_k / sqrt(b2^k)) (sqrt(b2^k) g_{t-k})``)
  gives, with ``r = b1^2 / b2`` and ``S = sum_{k=1}^{t-1} r^k``::

    |m_bar| / sqrt(v_t / (1 - b2^t))
        <= sqrt((1 - b2^t) / (1 - b2)) sqrt(w_0^2 + (coef_m (1 - b1))^2 S)

  with equality for ``g_{t-k}`` proportional to ``w_k / b2^k``: the bound is
  attained, so it is the formula's own. eps > 0 and eps_root > 0 only
  shorten the step. Capped at `MAX_STEP`; degenerate betas whose bound is NaN
  (b1 = b2 = 0) take the cap. Not differentiated: it only cuts off overflow.

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
    The bound, a scalar of `coef_g`'s dtype.

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
  bound = jnp.sqrt(bias_2 / one_minus_b2) * jnp.sqrt(w_g * w_g + w_m * w_m * sum_r)
  bound = jnp.where(bound < MAX_STEP, bound, const(MAX_STEP))
  return jax.lax.stop_gradient(bound.astype(dtype))


def gradient_limit(v_dtype) -> float:
  """``sqrt(max) / 2`` of `v_dtype`: the largest gradient magnitude `cut_gradient` keeps."""
  return 0.5 * math.sqrt(float(jnp.finfo(v_dtype).max))


def cut_gradient(g, limit: float):
  """`g` with every element (real and imaginary parts) cut to ``[-limit, limit]``.

  ``+ 0 * g`` keeps a non-finite gradient visible: an infinite element
  becomes NaN (in ``m``, ``v`` and the update, like a NaN gradient), not a
  cut finite one.

  Args:
    g: the gradient, in the compute dtype.
    limit: `gradient_limit` of the dtype ``v`` is stored in.

  Returns:
    The cut gradient.
  """
  limit = jnp.asarray(limit, jnp.finfo(g.dtype).dtype)  # a Python float is f64 under x64
  if jnp.iscomplexobj(g):
    cut = jax.lax.complex(jnp.clip(g.real, -limit, limit), jnp.clip(g.imag, -limit, limit))
  else:
    cut = jnp.clip(g, -limit, limit)
  return cut + 0.0 * g


def cut_step(update, bound):
  """`update` with every element's magnitude cut to `bound` (NaN stays NaN).

  Args:
    update: the step (real or complex).
    bound: `step_bound`.

  Returns:
    The cut step (complex: parts first, then the magnitude).
  """
  if not jnp.iscomplexobj(update):
    return jnp.clip(update, -bound, bound)
  # Parts first (an infinite part would make |update| infinite and update/|update| NaN).
  update = jax.lax.complex(jnp.clip(update.real, -bound, bound),
                           jnp.clip(update.imag, -bound, bound))
  size = jnp.abs(update)
  return jnp.where(size > bound, update * (bound / size), update)
