"""NAdam's own bound on the step, and the cuts that keep every step within it (private).

What keeps a step finite and no longer than the formulas allow when float32
(or float16, bfloat16) cannot hold the second moment. Two cuts:

- `cut_gradient`: each gradient element is cut to ``sqrt(max) / 2`` of the
  dtype ``v`` is stored in (9.2e18 for float32 and bfloat16, 128 for
  float16), the largest magnitude whose square the EMA ``v`` holds with room
  to spare (``v <= max / 4``). ``m`` and ``v`` are then the formulas' for the
  cut gradients: consistent with each other, never saturated (a finite ``v``
  stays finite: ``b2 v + (1 - b2) max / 4 <= max``), and once the gradients
  come back down the steps shrink as the formulas' do. The peers instead store
  ``v = inf`` and the coordinate never moves again. An infinite gradient is
  not a huge one: `keep_non_finite` makes it NaN in ``m`` (and so in the
  update), as in every peer.
- `cut_step`: every step is cut to `step_bound`, the largest step the formulas
  can give at step ``t``. `step_cut_needed` says where it can act beyond
  rounding, and the update compiles it in only there (two more operations in
  the update's pass over each leaf): the state stored narrower than it is
  computed (bfloat16 or float16 ``m`` or ``v``: their rounding accumulates, up
  to 6% past the bound in bfloat16 in a development sweep with the cut
  removed, and without bound in float16, whose ``v`` flushes to 0 beside a
  surviving ``m``), an ``eps`` too small to cover ``v``'s flush to zero, or
  traced hyperparameters. Elsewhere (float32 and float64 state from this
  optimizer's own steps) the derivation in `step_cut_needed` bounds every
  step by the bound times ``1 + O(u / (1 - b1^2 / b2))`` (u the unit
  roundoff; at most 1 + 1.6e-7 measured in tests/core/test_overflow.py):
  rounding, not overflow.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

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

  NaN stays NaN; an infinite element becomes ``+-limit`` here, and
  `keep_non_finite` on the first moment's input makes it NaN there.

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
  return cut


def cut_square(g, limit: float):
  """``|cut_gradient(g, limit)|^2``, the gradient's contribution to ``v``.

  Real `g`: ``min(g * g, limit^2)`` (``limit^2`` rounded as ``limit * limit``
  is in `g`'s dtype), bit for bit the square of the cut gradient (rounding is
  monotone, and an overflowing ``g * g = inf`` gives ``limit^2``) in one
  instruction instead of a two-sided clip; NaN stays NaN. Complex `g`: the
  parts are cut (as in `cut_gradient`) and squared.

  Args:
    g: the gradient, in the compute dtype.
    limit: `gradient_limit` of the dtype ``v`` is stored in.

  Returns:
    The real square, in `g`'s real dtype.
  """
  if jnp.iscomplexobj(g):
    g_c = cut_gradient(g, limit)
    return jnp.real(g_c * jnp.conj(g_c))
  real = np.dtype(jnp.finfo(g.dtype).dtype)
  limit_sq = real.type(limit) * real.type(limit)
  return jnp.minimum(g * g, jnp.asarray(limit_sq, real))


def keep_non_finite(cut, g):
  """`cut` where `g` is finite, NaN where `g` is infinite or NaN: ``cut + 0 * g``.

  Applied once, to the gradient entering ``m`` (a NaN ``m_t`` makes the update
  NaN): XLA:CPU computes ``m_t``, ``v_t`` and the update in three loops over
  the leaf, and each operation here costs in each loop that uses it.

  Args:
    cut: `cut_gradient` of `g`.
    g: the gradient.

  Returns:
    ``cut + 0 * g``.
  """
  return cut + 0.0 * g


def step_cut_needed(compute_dtype, m_dtype, v_dtype, b1, b2, eps, eps_root) -> bool:
  """Whether `cut_step` can change a step by more than rounding (else it is compiled out).

  For a state reached from zero moments by this optimizer's steps on cut
  gradients, Cauchy-Schwarz (`step_bound`) bounds the exact-arithmetic step by
  ``B``. Computed, two things move the step: rounding, and the flush of tiny
  values to zero. With ``T`` the smallest normal number of `compute_dtype`,
  each step loses at most ``3 T`` from ``v`` and from ``m`` (three flushed
  operations each), so the computed ``v`` is below the exact one by at most
  ``3 T / (1 - b2)`` and ``m`` is off by at most ``3 T / (1 - b1)``. With
  ``c = 1 - b2^t >= 1 - b2``, ``coef_m <= 1 / (1 - b1)`` and ``B >= 1 - b1``,
  and ``e = max(eps, sqrt(eps_root))`` (the denominator is at least
  ``sqrt(v / c) + e`` up to ``sqrt(v / c) + eps``)::

    |update| <= B (1 + D / e) + E / e,   D = sqrt(3 T) / (1 - b2),
                                         E = 3 T / (1 - b1)^2 + 2 T

  so the relative excess is at most ``(D + E / (1 - b1)) / e``; below the unit
  roundoff ``u`` of `compute_dtype` it is rounding. Rounding itself adds
  ``O(u / (1 - r))`` with ``r = b1^2 / b2`` (the accumulated rounding of ``m``,
  weighed as in `step_bound`): 1e-6 for b1 = 0.9, 1e-5 for b1 = 0.99, b2 = 0.999.
  That proof needs ``m`` and ``v`` stored as precisely as they are computed:
  bfloat16 or float16 storage (params or ``mu_dtype``) rounds them by 2^-9 or
  2^-12 per step, which accumulates past the bound (up to 6% in bfloat16 in a
  development sweep with the cut removed; float16 ``v`` flushes to 0 below
  6e-8 beside a surviving ``m``: unbounded).

  Args:
    compute_dtype: the dtype the leaf is computed in (float32 or float64).
    m_dtype: the dtype ``m`` is stored in.
    v_dtype: the dtype ``v`` is stored in.
    b1, b2, eps, eps_root: the hyperparameters as Python floats, or None
      when traced; rounded here to `compute_dtype`, as the leaf uses them.

  Returns:
    True where the cut must stay: narrower storage, traced hyperparameters,
    or ``e`` below ``(D + E / (1 - b1)) / u``.
  """
  real = jnp.finfo(compute_dtype)
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
