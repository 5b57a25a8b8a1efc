"""`scale_by_nadam`: the seed's NAdam (Dozat 2016, TF/Keras momentum schedule).

With `t = count + 1` and `psi = momentum_decay`::

  mu_t     = b1 * (1 - 0.5 * 0.96 ** (psi * t))
  mu_next  = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
  prod_t   = prod_{t-1} * mu_t
  m_t      = b1 * m + (1 - b1) * g
  v_t      = b2 * v + (1 - b2) * |g|^2
  m_bar    = (1 - mu_t) g / (1 - prod_t) + mu_next m_t / (1 - prod_t mu_next)
  update   = m_bar / (sqrt(v_t / (1 - b2 ** t) + eps_root) + eps)

The per-step scalars and ``mu_product`` are in the params' widest float
precision (`_scalar_dtype`; see `scale_by_nadam`).
"""

import math
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _validation
from optax_nadam._tree import path_str as _path_str

_LOG_096 = math.log(0.96)  # float64; the schedule is 0.96 ** (psi * t).
# No update is longer than this (times the learning rate): sqrt(float32 max) ~ 1.8e19, so
# that a learning rate in its range [0, 1.8e19] times a step stays finite in float32.
_MAX_STEP = float(np.sqrt(np.finfo(np.float32).max))


class ScaleByNadamState(NamedTuple):
  """State of `scale_by_nadam`.

  ``mu_product`` is float32 for float32, bfloat16, float16 and complex64
  params and float64 when any param is float64 or complex128 (under
  ``jax_enable_x64``): the rule of `_scalar_dtype`, applied to the params at
  ``init`` and to ``v`` (which has the params' dtypes) at ``update``.
  """

  count: chex.Array  # int32 scalar, steps taken, saturating at int32 max
  mu_product: chex.Array  # scalar, prod_{i<=t} mu_i, the params' widest float precision
  m: optax.Updates  # first moment, dtype mu_dtype or the param's
  v: optax.Updates  # second moment, the param's dtype


def momentum_coefficient(b1: float, momentum_decay: float, t: float) -> float:
  """The momentum schedule ``mu_t = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * t))``.

  The one copy of the schedule outside the jitted update, in Python float64,
  for code that checks or builds state (e.g. `optax_nadam.interop`).

  Args:
    b1: base momentum coefficient.
    momentum_decay: ``psi`` of the schedule.
    t: the step, 1 for the first update.

  Returns:
    ``mu_t`` as a Python float.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; TF/Keras
    documentation of `tf.keras.optimizers.Nadam`.
  """
  return float(b1) * (1.0 - 0.5 * math.exp(float(momentum_decay) * float(t) * _LOG_096))


def _scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype of the per-step scalars and `mu_product` for a params tree.

  The widest floating precision among the leaves: float64 when any leaf is
  float64 or complex128 (possible only under ``jax_enable_x64``), float32
  otherwise (float32, bfloat16, float16, complex64 and empty trees; narrower
  floats would round the momentum schedule and its product to a few digits).

  Args:
    tree: params, or any tree with their dtypes (e.g. the second moment ``v``,
      `jax.ShapeDtypeStruct` leaves).

  Returns:
    ``jnp.dtype('float32')`` or ``jnp.dtype('float64')``.
  """
  f64 = jnp.dtype(jnp.float64)
  for x in jax.tree.leaves(tree):
    dtype = jnp.dtype(jnp.result_type(x))
    if jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).dtype == f64:
      return f64
  return jnp.dtype(jnp.float32)


def _scalar(fn, dtype, *xs) -> Any:
  """`fn(*xs, lib)` with every hyperparameter in `xs` first rounded to `dtype`.

  Concrete hyperparameters are rounded to `dtype`, then `fn` runs in float64
  numpy on the rounded values and its result is rounded once to `dtype`:
  every scalar derived from a hyperparameter (``1 - b2``, ``log(b2)``) is
  derived from the same rounded value the moments use, so the EMA weights
  ``b2`` and ``1 - b2`` sum to 1 in `dtype` and the bias corrections use the
  betas the EMAs use. Traced hyperparameters (`optax.inject_hyperparams`,
  `jax.grad` with respect to a hyperparameter) get ``fn(*xs, jnp)`` in `dtype`.
  """
  values = [_validation.concrete_float(x) for x in xs]
  if any(v is None for v in values):
    return fn(*(jnp.asarray(x, dtype) for x in xs), jnp)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    rounded = [np.float64(np.dtype(dtype).type(v)) for v in values]
    return np.dtype(dtype).type(fn(*rounded, np))


def _bounds(t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2, log_b1, log_r):
  """NAdam's own bounds at step `t`: ``(step_bound, m_bound)``.

  With zero initial moments, ``m_t = (1 - b1) sum_k b1^k g_{t-k}``, ``v_t =
  (1 - b2) sum_k b2^k g_{t-k}^2`` and ``m_bar = sum_k w_k g_{t-k}`` with
  ``w_0 = coef_g + coef_m (1 - b1)``, ``w_k = coef_m (1 - b1) b1^k``.
  Cauchy-Schwarz (``g_{t-k} = (w_k / sqrt(b2^k)) (sqrt(b2^k) g_{t-k})``) gives,
  with ``r = b1^2 / b2`` and ``S = sum_{k=1}^{t-1} r^k``::

    |m_bar| / sqrt(v_t / (1 - b2^t))
        <= sqrt((1 - b2^t) / (1 - b2)) sqrt(w_0^2 + (coef_m (1 - b1))^2 S)
    |m_t| <= (1 - b1) sqrt((1 + S) / (1 - b2)) sqrt(v_t)

  with equality for ``g_{t-k}`` proportional to ``w_k / b2^k`` (resp.
  ``(b1 / b2)^k``): the bounds are attained, so they are the formula's own.
  eps > 0 and eps_root > 0 only shorten the step. ``step_bound`` is capped at
  `_MAX_STEP`; degenerate betas whose bound is NaN (b1 = b2 = 0) take the cap,
  and an infinite ``m_bound`` clamps nothing. Not differentiated: they only
  cut off overflow.
  """
  n = t - 1.0
  log_r = jnp.minimum(log_r, 80.0)  # r > e^80: S overflows and the cap applies
  r = jnp.exp(log_r)
  safe_log_r = jnp.where(log_r == 0, 1.0, log_r)
  geometric = r * jnp.expm1(n * safe_log_r) / jnp.expm1(safe_log_r)
  sum_r = jnp.where(n <= 0, 0.0, jnp.where(log_r == 0, n, geometric))
  sum_r = jnp.where(log_b1 == -jnp.inf, 0.0, sum_r)  # b1 = 0: no history
  w_m = coef_m * one_minus_b1
  w_g = coef_g + w_m
  step_bound = jnp.sqrt(bias_2 / one_minus_b2) * jnp.sqrt(w_g * w_g + w_m * w_m * sum_r)
  step_bound = jnp.where(step_bound < _MAX_STEP, step_bound, _MAX_STEP)
  m_bound = one_minus_b1 * jnp.sqrt((1.0 + sum_r) / one_minus_b2)
  m_bound = jnp.where(m_bound < jnp.inf, m_bound, jnp.inf)
  dtype = jnp.result_type(coef_g)
  return (jax.lax.stop_gradient(step_bound.astype(dtype)),
          jax.lax.stop_gradient(m_bound.astype(dtype)))


def _clip_magnitude(step, bound, m_t):
  """`step` with every element's magnitude cut to `bound`.

  ``+ 0 * m_t`` keeps a non-finite gradient or first moment visible: an
  infinite one gives a NaN step, not a clipped finite one (``m_t`` is finite
  whenever ``m`` and ``g`` are: its weights sum to 1).
  """
  if not jnp.iscomplexobj(step):
    return jnp.clip(step, -bound, bound) + 0.0 * m_t
  # Parts first (an infinite part would make |step| infinite and step/|step| NaN).
  step = jax.lax.complex(jnp.clip(step.real, -bound, bound), jnp.clip(step.imag, -bound, bound))
  size = jnp.abs(step)
  return jnp.where(size > bound, step * (bound / size), step) + 0.0 * m_t


def _check_mu_dtype(mu_dtype, params) -> None:
  """Refuses a complex `mu_dtype` for a real param and a real one for a complex param."""
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jnp.iscomplexobj(p) != jnp.issubdtype(mu_dtype, jnp.complexfloating):
      raise ValueError(
          f"scale_by_nadam: mu_dtype={mu_dtype} but the param at {_path_str(path)} has "
          f"dtype {jnp.result_type(p)}; the first moment of a real param must be real and "
          "of a complex param complex. Pass a mu_dtype of the params' kind, or None.")


def _check_updates(updates, moments) -> None:
  """Trace-time check: same tree, same shapes, float or complex leaves."""
  g_leaves, g_def = jax.tree_util.tree_flatten_with_path(updates)
  m_leaves, m_def = jax.tree_util.tree_flatten_with_path(moments)
  if g_def != m_def:
    g_paths = {_path_str(p) for p, _ in g_leaves}
    m_paths = {_path_str(p) for p, _ in m_leaves}
    detail = ""
    if g_paths - m_paths:
      detail += f" Only in the gradients: {sorted(g_paths - m_paths)[:5]}."
    if m_paths - g_paths:
      detail += f" Only in the optimizer state: {sorted(m_paths - g_paths)[:5]}."
    raise ValueError(
        "scale_by_nadam: the gradient tree does not match the tree the state "
        f"was initialised with.{detail} Gradients: {g_def}; state: {m_def}. "
        "Call init(params) with the params you take gradients of."
    )
  for (path, g), (_, m) in zip(g_leaves, m_leaves):
    dtype = jnp.result_type(g)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has dtype "
          f"{dtype}; gradients must be floating point or complex."
      )
    if jnp.shape(g) != jnp.shape(m):
      raise ValueError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has shape "
          f"{jnp.shape(g)} but its parameter (optimizer state) has shape "
          f"{jnp.shape(m)}."
      )
    if jnp.iscomplexobj(g) != jnp.iscomplexobj(m):
      raise TypeError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has dtype "
          f"{dtype} but its optimizer state has dtype {m.dtype}; real and "
          "complex cannot be mixed."
      )


def scale_by_nadam(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-7,
    eps_root: chex.Numeric = 0.0,
    momentum_decay: chex.Numeric = 0.004,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by the NAdam rule of TF/Keras (Dozat's momentum schedule).

  This is the algorithm of `tf.keras.optimizers.Nadam` (tf-keras legacy) and
  `torch.optim.NAdam`: Adam with Nesterov momentum whose momentum coefficient
  follows the schedule ``mu_t = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * t))``
  and whose bias correction uses the running product of the ``mu_t``. It is not
  `optax.scale_by_adam(nesterov=True)` (no schedule, no product).

  With ``momentum_decay=0.004`` (the default) the trajectory is tf-keras legacy
  Nadam's (its ``schedule_decay``) and torch NAdam's (its ``momentum_decay``).
  With ``momentum_decay=1.0`` it is Keras 3's ``keras.optimizers.Nadam``, which
  dropped the 0.004 factor.

  Precision: the per-step scalars (mu_t, mu_next, products, bias corrections)
  are computed once per step, and ``mu_product`` is stored, in the params'
  widest float precision: float32 for float32, bfloat16, float16 and complex64
  trees, float64 when any leaf is float64 or complex128 (under
  ``jax_enable_x64``), so a float64 run has float64 accuracy. Concrete
  hyperparameters are evaluated in float64 and rounded once to that dtype;
  traced ones (``optax.inject_hyperparams``, `jax.grad` with respect to a
  hyperparameter) are computed in it. The per-leaf work is one fused
  elementwise pass in at least float32 (in a mixed tree a float32 leaf uses
  the scalars rounded to float32), stored back in each moment's dtype.
  Returns the positive direction: chain with a negative learning rate (`nadam`
  does this).

  Differentiating through updates (hyperparameter gradients, meta-learning):
  the derivative of ``sqrt(v)`` is infinite at ``v = 0``, so when some
  coordinate of ``v`` can be 0 (a zero gradient, a parameter not used yet)
  set ``eps_root > 0`` (e.g. 1e-16), or the gradient is NaN or Inf.

  Args:
    b1: base momentum coefficient, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator after the square root, >= 0.
    eps_root: added to the bias-corrected second moment inside the square
      root, >= 0; > 0 keeps gradients through the update finite where some
      ``v`` is 0 (see above).
    momentum_decay: ``psi`` of the momentum schedule, >= 0. 0.004 is the
      seed's (tf-keras legacy ``schedule_decay``, torch ``momentum_decay``);
      1.0 gives Keras 3's Nadam.
    mu_dtype: optional dtype of the first moment ``m`` (e.g. ``jnp.bfloat16``);
      None keeps each parameter's dtype.

  Returns:
    An `optax.GradientTransformation` whose state is `ScaleByNadamState`.

  Raises:
    ValueError: a concrete hyperparameter is NaN, infinite or outside its
      range (b1, b2 in [0, 1); eps, eps_root, momentum_decay in [0, 3.4e38]).
    TypeError: a hyperparameter is not a number (bools and strings included)
      or mu_dtype is not a dtype.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    TensorFlow/Keras documentation of `tf.keras.optimizers.Nadam`.
  """
  b1 = _validation.number("b1", b1, _validation.UNIT_OPEN)
  b2 = _validation.number("b2", b2, _validation.UNIT_OPEN)
  eps = _validation.number("eps", eps, _validation.NON_NEGATIVE)
  eps_root = _validation.number("eps_root", eps_root, _validation.NON_NEGATIVE)
  momentum_decay = _validation.number("momentum_decay", momentum_decay, _validation.NON_NEGATIVE)
  mu_dtype = _validation.float_dtype("mu_dtype", mu_dtype)
  eps_root_is_zero = _validation.concrete_float(eps_root) == 0.0
  # The denominator is never 0 when eps * sqrt(1 - b2**t) is a normal float32 (eps >=
  # 1e-29, as 1 - b2 >= 6e-8 in float32) or eps_root is a normal float32 (>= 1.2e-38).
  zero_denominator_possible = not (
      _validation.concrete_float(eps) or 0.0) >= 1e-29 and not (
      _validation.concrete_float(eps_root) or 0.0) >= _validation.F32_TINY

  def init_fn(params):
    if mu_dtype is not None:
      _check_mu_dtype(mu_dtype, params)
    return ScaleByNadamState(
        count=jnp.zeros([], jnp.int32),
        mu_product=jnp.ones([], _scalar_dtype(params)),
        m=optax.tree.zeros_like(params, dtype=mu_dtype),
        v=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    _check_updates(updates, state.m)
    dtype = _scalar_dtype(state.v)  # v has the params' dtypes (m may be mu_dtype)
    count_inc = optax.safe_increment(state.count)
    t = count_inc.astype(dtype)

    def scalar(x, fn):
      return _scalar(fn, dtype, x)

    # Momentum schedule: 0.96 ** (psi * t) = exp(t * psi * log(0.96)).
    log_decay = scalar(momentum_decay, lambda x, lib: x * _LOG_096)
    b1_ = scalar(b1, lambda x, lib: x)
    mu_t = b1_ * (1.0 - 0.5 * jnp.exp(t * log_decay))
    mu_next = b1_ * (1.0 - 0.5 * jnp.exp((t + 1.0) * log_decay))
    mu_product = (state.mu_product * mu_t).astype(dtype)
    mu_product_next = mu_product * mu_next
    # Coefficients of g and m_t in m_bar.
    coef_g = (1.0 - mu_t) / (1.0 - mu_product)
    coef_m = mu_next / (1.0 - mu_product_next)

    # 1 - b2 ** t = -expm1(t * log(b2)), exact near t = 1 where 1 - b2 ** t is tiny.
    bias_2 = -jnp.expm1(t * scalar(b2, lambda x, lib: lib.log(x)))
    one_minus_b1 = scalar(b1, lambda x, lib: 1.0 - x)
    one_minus_b2 = scalar(b2, lambda x, lib: 1.0 - x)
    b2_ = scalar(b2, lambda x, lib: x)
    eps_ = scalar(eps, lambda x, lib: x)

    bound, m_bound = _bounds(t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2,
                        scalar(b1, lambda x, lib: lib.log(x)),
                        _scalar(lambda x, y, lib: 2.0 * lib.log(x) - lib.log(y), dtype, b1, b2))
    scalars = dict(b1=b1_, one_minus_b1=one_minus_b1, b2=b2_, one_minus_b2=one_minus_b2,
                   eps=eps_, bound=bound, m_bound=m_bound)
    if eps_root_is_zero:
      # sqrt(v / c) + eps = (sqrt(v) + eps * sqrt(c)) / sqrt(c): fold sqrt(c)
      # into the scalars, leaving one sqrt, one add, one divide per element.
      sqrt_bias_2 = jnp.sqrt(bias_2)
      scalars.update(coef_g=coef_g * sqrt_bias_2, coef_m=coef_m * sqrt_bias_2,
                     eps=eps_ * sqrt_bias_2)

      def denominator(v_t, s):
        return jnp.sqrt(v_t) + s["eps"]
    else:
      scalars.update(coef_g=coef_g, coef_m=coef_m, inv_bias_2=1.0 / bias_2,
                     eps_root=scalar(eps_root, lambda x, lib: x))

      def denominator(v_t, s):
        return jnp.sqrt(v_t * s["inv_bias_2"] + s["eps_root"]) + s["eps"]

    def leaf(g, m, v):
      compute = jnp.promote_types(g.dtype, jnp.float32)
      real = jnp.finfo(compute).dtype
      s = scalars
      if real != dtype:
        # A float32 (or narrower) leaf of a float64 tree: the scalars rounded
        # once to float32, then the leaf computed as in a float32-only tree.
        s = {k: jnp.asarray(x).astype(real) for k, x in scalars.items()}
      g_c = g.astype(compute)
      m_t = s["b1"] * m.astype(compute) + s["one_minus_b1"] * g_c
      g_sq = jnp.real(g_c * jnp.conj(g_c)) if jnp.iscomplexobj(g_c) else g_c * g_c
      v_real = jnp.real(v) if jnp.iscomplexobj(v) else v  # |g|^2 kept in a complex v
      v_t = s["b2"] * v_real.astype(g_sq.dtype) + s["one_minus_b2"] * g_sq
      # Saturate instead of overflowing: an infinite v (|g| above ~1.8e19 in
      # float32, ~256 in float16) would freeze the coordinate, every later
      # step being m / inf = 0. NaN still propagates (NaN > max is False).
      # A compare + select, not jnp.minimum: XLA:CPU duplicates a minimum
      # into the step's fusion and then copies v per leaf (2-3x slower step
      # on 1M-element leaves); the values are the same bits.
      v_max = jax.lax.full_like(v_t, jnp.finfo(v.dtype).max)
      saturated = v_t > v_max
      v_t = jax.lax.select(saturated, v_max, v_t)
      # A saturated v is smaller than the formula's: cut m_t to the largest
      # |m_t| the formula allows next to it, so that the ratio m / sqrt(v) (the
      # step) comes back down as the formula's does once the gradients do.
      m_lim = s["m_bound"] * math.sqrt(float(jnp.finfo(v.dtype).max))
      m_t = jnp.where(saturated, _clip_magnitude(m_t, m_lim, m_t), m_t)
      denom = denominator(v_t, s)
      step = _clip_magnitude((s["coef_g"] * g_c + s["coef_m"] * m_t) / denom, s["bound"], m_t)
      if zero_denominator_possible:
        # eps = eps_root = 0 and v_t = 0 (no gradient yet, or g^2 below the
        # smallest float): 0/0 would be NaN; take the step as 0. A NaN denom
        # (NaN gradient) is not == 0, so NaN still propagates.
        step = jnp.where(denom == 0, jnp.zeros_like(step), step)
      return step.astype(g.dtype), m_t.astype(m.dtype), v_t.astype(v.dtype)

    out = jax.tree.map(leaf, updates, state.m, state.v)
    steps, m, v = (
        jax.tree.map(lambda _, o, i=i: o[i], updates, out) for i in range(3)
    )
    return steps, ScaleByNadamState(count_inc, mu_product, m, v)

  return optax.GradientTransformation(init_fn, update_fn)
