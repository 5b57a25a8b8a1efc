"""`scale_by_nadam`: the seed's NAdam (Dozat 2016, TF/Keras momentum schedule).

With `t = count + 1` and `psi = momentum_decay`::

  mu_t     = b1 * (1 - 0.5 * 0.96 ** (psi * t))
  mu_next  = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
  prod_t   = prod_{t-1} * mu_t
  m_t      = b1 * m + (1 - b1) * g
  v_t      = b2 * v + (1 - b2) * |g|^2
  m_bar    = (1 - mu_t) g / (1 - prod_t) + mu_next m_t / (1 - prod_t mu_next)
  update   = m_bar / (sqrt(v_t / (1 - b2 ** t) + eps_root) + eps)
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


class ScaleByNadamState(NamedTuple):
  """State of `scale_by_nadam`."""

  count: chex.Array  # int32 scalar, steps taken, saturating at int32 max
  mu_product: chex.Array  # float32 scalar, prod_{i<=t} mu_i
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


def _scalar(x: Any, fn) -> Any:
  """`fn(x, np)` in float64 rounded once to float32 when `x` is concrete.

  Traced hyperparameters (under `optax.inject_hyperparams`) get `fn(x, jnp)`
  in float32. Rounding once from float64 is what keeps our float32 trajectory
  at least as close to the exact one as the peers' (torch does its scalars in
  Python float64).
  """
  value = _validation.concrete_float(x)
  if value is None:
    return fn(jnp.asarray(x, jnp.float32), jnp)
  with np.errstate(divide="ignore"):
    return np.float32(fn(np.float64(value), np))


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

  The per-step scalars are computed once per step in float32 (from float64
  constants when hyperparameters are concrete); the per-leaf work is one fused
  elementwise pass computed in at least float32, stored back in each moment's
  dtype. Returns the positive direction: chain with a negative learning rate
  (`nadam` does this).

  Args:
    b1: base momentum coefficient, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator after the square root, >= 0.
    eps_root: added to the bias-corrected second moment inside the square
      root, >= 0 (useful when differentiating through the update).
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
  # eps * sqrt(1 - b2**t) stays a normal float32 for eps >= 1e-29 (1 - b2 >= 1e-16).
  zero_denominator_possible = not (
      (_validation.concrete_float(eps) or 0.0) >= 1e-29
      or (_validation.concrete_float(eps_root) or 0.0) > 0.0)

  def init_fn(params):
    return ScaleByNadamState(
        count=jnp.zeros([], jnp.int32),
        mu_product=jnp.ones([], jnp.float32),
        m=optax.tree.zeros_like(params, dtype=mu_dtype),
        v=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    _check_updates(updates, state.m)
    f32 = jnp.float32
    count_inc = optax.safe_increment(state.count)
    t = count_inc.astype(f32)

    # Momentum schedule: 0.96 ** (psi * t) = exp(t * psi * log(0.96)).
    log_decay = _scalar(momentum_decay, lambda x, lib: x * _LOG_096)
    b1_ = _scalar(b1, lambda x, lib: x)
    mu_t = b1_ * (1.0 - 0.5 * jnp.exp(t * log_decay))
    mu_next = b1_ * (1.0 - 0.5 * jnp.exp((t + 1.0) * log_decay))
    mu_product = (state.mu_product * mu_t).astype(f32)
    mu_product_next = mu_product * mu_next
    # Coefficients of g and m_t in m_bar.
    coef_g = (1.0 - mu_t) / (1.0 - mu_product)
    coef_m = mu_next / (1.0 - mu_product_next)

    # 1 - b2 ** t = -expm1(t * log(b2)), exact near t = 1 where 1 - b2 ** t is tiny.
    bias_2 = -jnp.expm1(t * _scalar(b2, lambda x, lib: lib.log(x)))
    one_minus_b1 = _scalar(b1, lambda x, lib: 1.0 - x)
    one_minus_b2 = _scalar(b2, lambda x, lib: 1.0 - x)
    b2_ = _scalar(b2, lambda x, lib: x)
    eps_ = _scalar(eps, lambda x, lib: x)

    if eps_root_is_zero:
      # sqrt(v / c) + eps = (sqrt(v) + eps * sqrt(c)) / sqrt(c): fold sqrt(c)
      # into the scalars, leaving one sqrt, one add, one divide per element.
      sqrt_bias_2 = jnp.sqrt(bias_2)
      coef_g = coef_g * sqrt_bias_2
      coef_m = coef_m * sqrt_bias_2
      eps_hat = eps_ * sqrt_bias_2

      def denominator(v_t):
        return jnp.sqrt(v_t) + eps_hat
    else:
      inv_bias_2 = 1.0 / bias_2
      eps_root_ = _scalar(eps_root, lambda x, lib: x)

      def denominator(v_t):
        return jnp.sqrt(v_t * inv_bias_2 + eps_root_) + eps_

    def leaf(g, m, v):
      compute = jnp.promote_types(g.dtype, f32)
      g_c = g.astype(compute)
      m_t = b1_ * m.astype(compute) + one_minus_b1 * g_c
      g_sq = jnp.real(g_c * jnp.conj(g_c)) if jnp.iscomplexobj(g_c) else g_c * g_c
      v_real = jnp.real(v) if jnp.iscomplexobj(v) else v  # |g|^2 kept in a complex v
      v_t = b2_ * v_real.astype(g_sq.dtype) + one_minus_b2 * g_sq
      # Saturate instead of overflowing: an infinite v (|g| above ~1.8e19 in
      # float32, ~256 in float16) would freeze the coordinate, every later
      # step being m / inf = 0. NaN still propagates (NaN > max is False).
      # A compare + select, not jnp.minimum: XLA:CPU duplicates a minimum
      # into the step's fusion and then copies v per leaf (2-3x slower step
      # on 1M-element leaves); the values are the same bits.
      v_max = jax.lax.full_like(v_t, jnp.finfo(v.dtype).max)
      v_t = jax.lax.select(v_t > v_max, v_max, v_t)
      denom = denominator(v_t)
      step = (coef_g * g_c + coef_m * m_t) / denom
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
