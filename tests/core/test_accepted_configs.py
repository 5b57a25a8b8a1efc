"""Validation by one principle, tested as a property.

Every configuration `nadam` / `nadamw` accepts gives finite, descending
updates for every gradient sequence that is finite in the params' dtype
(zeros, subnormals and huge values included); every other configuration is
refused at construction (or, for ``mu_dtype``, at ``init``) by a ValueError
or TypeError that names the argument. Hyperparameters are drawn as Python
numbers, numpy scalars of every integer and float width (longdouble
included), 0-d and 1-element arrays and jax scalars.
"""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_nadam

VALUES = [0, 1, 3, 0.0, 1e-45, 1e-40, 1e-30, 1e-8, 1e-3, 0.5, 0.9, 0.999, 0.99999999,
          1.0, 2.0, 3_000_000_000, 2**32, 2**63, 1e19, 1e38, 1e39, -1.0, float("nan"),
          float("inf")]
INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_TYPES = [np.float16, np.float32, np.float64, np.longdouble]


@st.composite
def hyperparameter(draw):
  """A value in one of the forms a user may pass, or None when that form cannot hold it."""
  value = draw(st.sampled_from(VALUES))
  form = draw(st.sampled_from(["python", "numpy int", "numpy float", "0-d", "1-element",
                               "jax"]))
  with np.errstate(all="ignore"):
    if form == "python":
      return value
    if form == "numpy int":
      kind = draw(st.sampled_from(INT_TYPES))
      info = np.iinfo(kind)
      ok = isinstance(value, int) or (np.isfinite(value) and float(value).is_integer())
      return kind(int(value)) if ok and info.min <= value <= info.max else None
    kind = draw(st.sampled_from(FLOAT_TYPES))
    if form == "numpy float":
      return kind(value)
    if form == "0-d":
      return np.array(value, kind)
    if form == "1-element":
      return np.array([value], kind)
    return jnp.asarray(value, jnp.float32)


NAMES = ["learning_rate", "b1", "b2", "eps", "eps_root", "momentum_decay", "weight_decay"]
MAGNITUDES = [0.0, 1e-45, 1e-40, 1e-30, 1.0, 1e19, 1e30, 3.4e38]


def _descending_and_finite(tx, dtype, gradients):
  """Updates are finite and never point uphill for sign-constant gradients."""
  signs = np.array([1.0, -1.0, 1.0], np.float32)
  params = jnp.asarray(signs, dtype)  # wd * param points the same way as g
  state = tx.init(params)
  for magnitude in gradients:
    g = jnp.asarray(np.minimum(magnitude, float(jnp.finfo(dtype).max)) * signs, dtype)
    updates, state = tx.update(g, state, params)
    u = np.asarray(updates, np.float64)
    assert np.all(np.isfinite(u)), (magnitude, u)
    assert np.all(u * signs <= 0), (magnitude, u)


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(
    given=st.dictionaries(st.sampled_from(NAMES), hyperparameter(), max_size=3),
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    gradients=st.lists(st.sampled_from(MAGNITUDES), min_size=1, max_size=4))
def test_accepted_means_finite_and_descending(given, dtype, gradients):
  kwargs = {k: v for k, v in given.items() if v is not None}
  factory = optax_nadam.nadamw if "weight_decay" in kwargs else optax_nadam.nadam
  try:
    tx = factory(**kwargs)
  except (ValueError, TypeError) as e:
    # Refused by name: the message quotes one of the given arguments.
    assert any(name in str(e) for name in kwargs), (kwargs, e)
    return
  _descending_and_finite(tx, jnp.dtype(dtype), gradients)


def test_mu_dtype_that_is_not_a_float_is_refused_by_name():
  # A float or complex one of either kind is optax's contract (tests/core/test_guards.py).
  with pytest.raises((ValueError, TypeError), match="mu_dtype"):
    optax_nadam.nadam(mu_dtype=jnp.int32).init(jnp.zeros(3))


@pytest.mark.parametrize("case,value", [
    ("learning_rate", np.int64(3_000_000_000)), ("learning_rate", np.int64(2**32)),
    ("learning_rate", np.uint64(2**63)), ("learning_rate", np.longdouble(1e-3)),
    ("b2", np.longdouble(0.999))])
def test_issue_numpy_values_are_their_float_values(case, value):
  # Before: 3e9 wrapped through int32 and ascended, 2**32 gave zero updates,
  # uint64(2**63) raised an OverflowError naming nothing, longdouble crashed.
  tx = optax_nadam.nadam(**{case: value})
  params = jnp.zeros(2)
  updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
  lr = float(value) if case == "learning_rate" else 1e-3
  expected = -lr * 1.0564516  # the first step of the formulas is 1.0565 lr for g = 1
  np.testing.assert_allclose(np.asarray(updates, np.float64), expected, rtol=1e-6)


def test_eps_root_below_a_normal_float32_gives_zero_not_nan():
  tx = optax_nadam.nadam(1e-3, eps=0.0, eps_root=1e-40)  # 1e-40 is 0 on the CPU
  params = jnp.zeros(2)
  updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
  assert np.array_equal(np.asarray(updates), np.zeros(2))


def test_weight_decay_that_overflows_times_a_param_is_refused():
  with pytest.raises(ValueError, match="weight_decay"):
    optax_nadam.nadamw(0.0, weight_decay=1e38)


def test_b2_that_rounds_to_one_in_float32_is_refused():
  with pytest.raises(ValueError, match="b2"):
    optax_nadam.nadam(b2=0.99999999)
  jax.jit(optax_nadam.nadam(b2=0.9999999).update)  # just below: accepted


@pytest.mark.parametrize("key", ["clipnorm", "global_clipnorm"])
def test_keras_clipnorm_below_a_normal_float32_is_refused(key):
  # 1e-40 is 0 on the CPU: 0/0 clipped zero gradients to NaN.
  from optax_nadam.keras import Nadam
  with pytest.raises(ValueError, match=key):
    Nadam(**{key: 1e-40})
  Nadam(**{key: 1.2e-38})  # the smallest normal float32 is accepted


def test_keras_unsorted_piecewise_boundaries_are_refused():
  from optax_nadam.keras import Nadam
  spec = {"class_name": "PiecewiseConstantDecay",
          "config": {"boundaries": [10, 5], "values": [1e-3, 1e-4, 1e-5]}}
  with pytest.raises(ValueError, match="increasing order"):
    Nadam(learning_rate=spec)


def test_keras_from_config_names_decay_not_schedule_decay():
  from optax_nadam.keras import Nadam
  with pytest.raises(ValueError, match="'decay' \\(tf-keras legacy's schedule_decay\\)"):
    Nadam.from_config({"learning_rate": 1e-3, "decay": float("nan")})
