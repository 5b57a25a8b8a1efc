"""`scale_by_nadam`: NAdam with the momentum schedule of TF/Keras (Dozat 2016).

With ``t = count + 1`` and ``psi = momentum_decay``::

  mu_t     = b1 * (1 - 0.5 * 0.96 ** (psi * t))
  mu_next  = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
  prod_t   = prod_{t-1} * mu_t
  m_t      = b1 * m + (1 - b1) * g
  v_t      = b2 * v + (1 - b2) * |g|^2
  m_bar    = (1 - mu_t) g / (1 - prod_t) + mu_next m_t / (1 - prod_t mu_next)
  update   = m_bar / (sqrt(v_t / (1 - b2 ** t) + eps_root) + eps)

The code follows the formulas: `_step_scalars` computes every per-step scalar
once, under the names of `StepScalars`; `_leaf` applies them to one leaf.

Precision policy (the one statement of it):

- The scalar dtype is the params' widest float precision: float32 for
  float32, bfloat16, float16 and complex64 trees, float64 when any leaf is
  float64 or complex128 (under ``jax_enable_x64``). The per-step scalars and
  the stored ``mu_product`` are in it.
- Every hyperparameter is first rounded to the scalar dtype; each scalar
  derived from it (``1 - b2``, ``log b2``) is computed in float64 from the
  rounded value and rounded once. So the EMA weights ``b`` and ``1 - b`` sum
  to 1 in the scalar dtype and the bias correction ``1 - b2 ** t`` uses the
  ``b2`` the EMA uses. Traced hyperparameters (`optax.inject_hyperparams`,
  `jax.grad` with respect to one) are computed in the scalar dtype.
- Each leaf is one fused elementwise pass in at least float32 (a float32
  leaf of a float64 tree takes the scalars rounded to float32), stored back
  in each moment's dtype.
"""

import math
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _bounds, _validation
from optax_nadam._tree_checks import check_updates

_LOG_096 = math.log(0.96)  # float64; the schedule is 0.96 ** (psi * t).


class ScaleByNadamState(NamedTuple):
  """State of `scale_by_nadam`.

  ``mu_product`` has the scalar dtype of the precision policy (module
  docstring): `_scalar_dtype` of the params at ``init`` and of ``v`` (which
  has the params' dtypes) at ``update``.
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
  """The scalar dtype of the precision policy (module docstring) for a tree.

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


class StepScalars(NamedTuple):
  """One step's scalars, each named for its place in the formulas.

  When ``eps_root == 0``, ``sqrt(1 - b2 ** t)`` is folded into ``coef_g``,
  ``coef_m`` and ``eps`` (``sqrt(v_t / c) + eps = (sqrt(v_t) + eps sqrt(c)) /
  sqrt(c)``: one sqrt, one add, one divide per element) and ``inv_bias_2``
  and ``eps_root`` are None.
  """

  b1: Any  # weight of m in m_t
  one_minus_b1: Any  # weight of g in m_t
  b2: Any  # weight of v in v_t
  one_minus_b2: Any  # weight of |g|^2 in v_t
  eps: Any  # added after the square root (times sqrt(1 - b2 ** t) when folded)
  step_bound: Any  # the largest |update| the formulas allow (`_bounds.step_bound`)
  coef_g: Any  # weight of g in the update: (1 - mu_t) / (1 - prod_t)
  coef_m: Any  # weight of m_t in the update: mu_next / (1 - prod_t mu_next)
  inv_bias_2: Any = None  # 1 / (1 - b2 ** t), unless folded
  eps_root: Any = None  # added inside the square root, unless folded


class _Hyper(NamedTuple):
  """The validated hyperparameters of `scale_by_nadam`."""

  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  momentum_decay: Any


def _rounded(x: Any, dtype) -> Any:
  """A hyperparameter in `dtype`: rounded once when concrete, converted when traced."""
  value = _validation.concrete_float(x)
  if value is None:
    return jnp.asarray(x, dtype)
  return np.dtype(dtype).type(value)


def _derived(fn, dtype, *xs) -> Any:
  """``fn(*xs, lib)`` from the hyperparameters `xs` rounded to `dtype` (the policy).

  Concrete: `fn` runs in float64 numpy on the rounded values and the result
  is rounded once to `dtype`. Traced: ``fn(*xs, jnp)`` in `dtype`.
  """
  values = [_validation.concrete_float(x) for x in xs]
  if any(v is None for v in values):
    return fn(*(jnp.asarray(x, dtype) for x in xs), jnp)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    rounded = [np.float64(np.dtype(dtype).type(v)) for v in values]
    return np.dtype(dtype).type(fn(*rounded, np))


def _step_scalars(h: _Hyper, t, mu_product, dtype, fold: bool):
  """Every scalar of step `t`, like tf-keras legacy Nadam's ``_prepare_local``.

  Args:
    h: the hyperparameters.
    t: ``count + 1`` in `dtype`.
    mu_product: ``prod_{t-1}``.
    dtype: the scalar dtype.
    fold: fold ``sqrt(1 - b2 ** t)`` into the coefficients (``eps_root == 0``).

  Returns:
    ``(prod_t, StepScalars)``.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam".
  """
  log_decay = _derived(lambda psi, lib: psi * _LOG_096, dtype, h.momentum_decay)
  b1 = _rounded(h.b1, dtype)
  # Momentum schedule: 0.96 ** (psi * t) = exp(t * psi * log(0.96)).
  mu_t = b1 * (1.0 - 0.5 * jnp.exp(t * log_decay))
  mu_next = b1 * (1.0 - 0.5 * jnp.exp((t + 1.0) * log_decay))
  prod_t = (mu_product * mu_t).astype(dtype)
  prod_next = prod_t * mu_next
  coef_g = (1.0 - mu_t) / (1.0 - prod_t)
  coef_m = mu_next / (1.0 - prod_next)
  # 1 - b2 ** t = -expm1(t * log(b2)), exact near t = 1 where 1 - b2 ** t is tiny.
  bias_2 = -jnp.expm1(t * _derived(lambda b2, lib: lib.log(b2), dtype, h.b2))
  one_minus_b1 = _derived(lambda b1, lib: 1.0 - b1, dtype, h.b1)
  one_minus_b2 = _derived(lambda b2, lib: 1.0 - b2, dtype, h.b2)
  b2 = _rounded(h.b2, dtype)
  eps = _rounded(h.eps, dtype)
  step_bound = _bounds.step_bound(
      t, coef_g, coef_m, one_minus_b1, one_minus_b2, bias_2,
      _derived(lambda b1, lib: lib.log(b1), dtype, h.b1),
      _derived(lambda b1, b2, lib: 2.0 * lib.log(b1) - lib.log(b2), dtype, h.b1, h.b2))
  common = dict(b1=b1, one_minus_b1=one_minus_b1, b2=b2, one_minus_b2=one_minus_b2)
  if fold:
    sqrt_bias_2 = jnp.sqrt(bias_2)
    return prod_t, StepScalars(
        **common, coef_g=coef_g * sqrt_bias_2, coef_m=coef_m * sqrt_bias_2,
        eps=eps * sqrt_bias_2, step_bound=step_bound)
  return prod_t, StepScalars(
      **common, eps=eps, step_bound=step_bound, coef_g=coef_g,
      coef_m=coef_m, inv_bias_2=1.0 / bias_2, eps_root=_rounded(h.eps_root, dtype))


def _leaf(s: StepScalars, g, m, v, scalar_dtype, zero_denominator_possible: bool,
          step_cut_needed, learning_rate=None):
  """One leaf's update, ``m_t`` and ``v_t`` (the formulas of the module docstring).

  The guards (`optax_nadam._bounds`) act only where a stored moment would overflow its
  dtype, a step would leave NAdam's bound by more than rounding, or a float16 update
  would leave float16's range. `step_cut_needed` is `_bounds.step_cut_needed` of
  ``(compute, m, v)`` dtypes; `zero_denominator_possible` (eps = eps_root = 0 in
  float32) takes a 0/0 step as 0; with a `learning_rate` the update is
  ``-learning_rate * direction``, formed before the cast to `g`'s dtype.

  Returns:
    ``(update, m_t, v_t)`` in the dtypes of `g`, `m` and `v`.
  """
  compute = jnp.promote_types(g.dtype, jnp.float32)
  real = jnp.finfo(compute).dtype
  if real != scalar_dtype:
    # A float32 (or narrower) leaf of a float64 tree: the scalars rounded
    # once to float32, then the leaf computed as in a float32-only tree.
    s = StepScalars(*(None if x is None else jnp.asarray(x).astype(real) for x in s))
  g_in = g.astype(compute)
  v_real = jnp.real(v) if jnp.iscomplexobj(v) else v  # |g|^2 kept in a complex v
  g_c, v_t = _bounds.fit_v(g_in, s.b2 * v_real.astype(real), s.one_minus_b2, v.dtype,
                           g.dtype)
  # A complex mu_dtype for a real param holds a zero imaginary part; a real one for a
  # complex param keeps the real part of the EMA (optax: mu_dtype sets m's dtype).
  m_in = jnp.real(m) if jnp.iscomplexobj(m) and not jnp.iscomplexobj(g) else m
  m_t = s.b1 * m_in.astype(jnp.promote_types(m_in.dtype, compute)) + s.one_minus_b1 * g_c
  if s.eps_root is None:  # sqrt(1 - b2 ** t) folded into the scalars
    denominator = jnp.sqrt(v_t) + s.eps
  else:
    denominator = jnp.sqrt(v_t * s.inv_bias_2 + s.eps_root) + s.eps
  update = (s.coef_g * g_c + s.coef_m * m_t) / denominator
  if step_cut_needed(compute, m.dtype, v.dtype):
    update = _bounds.cut_step(update, s.step_bound)
  if zero_denominator_possible:
    # v_t = 0 (no gradient yet, or g^2 below the smallest float): 0/0 would be
    # NaN; take the step as 0. A NaN denominator (NaN gradient) still propagates.
    update = jnp.where(denominator == 0, jnp.zeros_like(update), update)
  if learning_rate is not None:
    update = -jnp.asarray(learning_rate).astype(real) * update
  if float(jnp.finfo(g.dtype).max) < 2.0**127:
    # float16: a direction or update beyond its range is cut to its largest value.
    update = _bounds.saturate(update, g.dtype)
  if float(jnp.finfo(m.dtype).max) < float(jnp.finfo(g.dtype).max):
    m_t = _bounds.saturate(m_t, m.dtype)  # a narrower mu_dtype: the stored m saturates
  if jnp.iscomplexobj(m_t) and not jnp.iscomplexobj(m):
    m_t = jnp.real(m_t)
  return update.astype(g.dtype), m_t.astype(m.dtype), v_t.astype(v.dtype)


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

  Precision follows the policy in this module's docstring (float32 scalars
  for 32-bit and narrower trees, float64 for float64 ones). Guards act only
  where the formulas cannot be computed in the dtypes involved (`optax_nadam._bounds`):
  a ``v_t`` or narrower ``m_t`` that would overflow its dtype, a step beyond NAdam's
  own bound by more than rounding, a float16 direction beyond 65504. Returns the
  positive direction: chain with a negative learning rate (`nadam` does this).

  Differentiating through updates (hyperparameter gradients, meta-learning):
  the derivative of ``sqrt(v)`` is infinite at ``v = 0``, so when some
  coordinate of ``v`` can be 0 (a zero gradient, a parameter not used yet)
  set ``eps_root > 0`` (e.g. 1e-16), or the gradient is NaN or Inf.

  Args:
    b1: base momentum coefficient, in [0, 1) (below 1 in float32 too).
    b2: decay of the second moment, in [0, 1) (below 1 in float32 too).
    eps: added to the denominator after the square root, >= 0.
    eps_root: added to the bias-corrected second moment inside the square
      root, >= 0; > 0 keeps gradients through the update finite where some
      ``v`` is 0 (see above).
    momentum_decay: ``psi`` of the momentum schedule, >= 0. 0.004 is the
      seed's (tf-keras legacy ``schedule_decay``, torch ``momentum_decay``);
      1.0 gives Keras 3's Nadam.
    mu_dtype: optional dtype of the first moment ``m`` (e.g. ``jnp.bfloat16``);
      None keeps each parameter's dtype. As in optax, it sets ``m``'s dtype
      whatever the params' kind: a complex ``m`` of a real param stays real-valued;
      a real ``m`` of a complex param keeps the real part of the gradients' EMA
      (the imaginary part of the step then comes from the current gradient alone).

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
  return _scale_by_nadam(b1, b2, eps, eps_root, momentum_decay, mu_dtype)


def _scale_by_nadam(b1, b2, eps, eps_root, momentum_decay, mu_dtype):
  """`scale_by_nadam` whose ``update`` also takes ``learning_rate=`` (this step's, a
  scalar): the update is then ``-learning_rate * direction``, formed before the cast to
  the gradient's dtype (`nadam`)."""
  h = _Hyper(
      b1=_validation.number("b1", b1, _validation.UNIT_OPEN),
      b2=_validation.number("b2", b2, _validation.UNIT_OPEN),
      eps=_validation.number("eps", eps, _validation.NON_NEGATIVE),
      eps_root=_validation.number("eps_root", eps_root, _validation.NON_NEGATIVE),
      momentum_decay=_validation.number("momentum_decay", momentum_decay,
                                        _validation.NON_NEGATIVE))
  mu_dtype = _validation.float_dtype("mu_dtype", mu_dtype)
  fold = _validation.concrete_float(h.eps_root) == 0.0
  # The denominator is never 0 when eps * sqrt(1 - b2**t) is a normal float32 (eps >=
  # 1e-29, as 1 - b2 >= 6e-8 in float32) or eps_root is a normal float32 (>= 1.2e-38).
  zero_denominator_possible = not (
      _validation.concrete_float(h.eps) or 0.0) >= 1e-29 and not (
      _validation.concrete_float(h.eps_root) or 0.0) >= _validation.F32_TINY

  def step_cut_needed(compute, m_dtype, v_dtype):
    return _bounds.step_cut_needed(compute, m_dtype, v_dtype, *(
        _validation.concrete_float(x) for x in (h.b1, h.b2, h.eps, h.eps_root)))

  def init_fn(params):
    return ScaleByNadamState(
        count=jnp.zeros([], jnp.int32),
        mu_product=jnp.ones([], _scalar_dtype(params)),
        m=optax.tree.zeros_like(params, dtype=mu_dtype),
        v=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, learning_rate=None):
    del params
    check_updates(updates, state.v)  # v has the params' dtypes (m may be mu_dtype)
    dtype = _scalar_dtype(state.v)  # v has the params' dtypes (m may be mu_dtype)
    count = optax.safe_increment(state.count)
    mu_product, scalars = _step_scalars(h, count.astype(dtype), state.mu_product, dtype, fold)
    lr = None if learning_rate is None else _rounded(learning_rate, dtype)
    out = jax.tree.map(
        lambda g, m, v: _leaf(scalars, g, m, v, dtype, zero_denominator_possible,
                              step_cut_needed, lr),
        updates, state.m, state.v)
    new_updates, m, v = (
        jax.tree.map(lambda _, o, i=i: o[i], updates, out) for i in range(3))
    return new_updates, ScaleByNadamState(count, mu_product, m, v)

  return optax.GradientTransformation(init_fn, update_fn)
