"""`_validation`: the hostile-hyperparameter sweep and the one rule set.

Every argument of `scale_by_nadam`, `nadam`, `nadamw`, `keras.Nadam` and every
number of the Keras schedule configs, against values a user may pass by
mistake: each is either refused at construction with a ValueError/TypeError
naming the argument, or accepted and then gives finite updates and params for
a few steps on finite gradients.
"""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nadam
from optax_nadam import _validation
from optax_nadam.keras import Nadam
from optax_nadam.keras import schedules as keras_schedules

pytestmark = pytest.mark.core  # runs at the dependency floors too (.ci/run-floors)

HOSTILE = [math.inf, math.nan, 1e308, 1e39, 2**63, 2**31, -0.0, 1e-45, True, "0.1"]
STEPS = 3
PARAMS = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}
GRADS = [{"w": jnp.array([0.3, -2.0, 5.0], jnp.float32) * (1.0 + 0.5 * t)} for t in range(STEPS)]


def _runs_finite(tx):
  """STEPS updates on finite gradients give finite updates and params."""
  params, state = PARAMS, tx.init(PARAMS)
  for g in GRADS:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    for name, tree in (("updates", updates), ("params", params)):
      leaf = np.asarray(tree["w"], np.float64)
      assert np.all(np.isfinite(leaf)), f"non-finite {name} {leaf}"


def _keras(key, value):
  # Some arguments act only with a companion: EMA options with use_ema, exclusions
  # with weight decay.
  context = {"ema_momentum": dict(use_ema=True), "ema_overwrite_frequency": dict(use_ema=True),
             "exclude_from_weight_decay": dict(weight_decay=0.1)}.get(key, {})
  return Nadam(**{**context, key: value})


def _schedule(class_name, key, value):
  config = dict(SCHEDULE_BASE[class_name])
  config[key] = [value, 40.0] if key == "boundaries" else (
      [value, 0.05, 0.01] if key == "values" else value)
  return Nadam({"class_name": class_name, "config": config})


SCHEDULE_BASE = {
    "ExponentialDecay": dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5),
    "InverseTimeDecay": dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5),
    "PiecewiseConstantDecay": dict(boundaries=[1, 40], values=[0.1, 0.05, 0.01]),
    "PolynomialDecay": dict(initial_learning_rate=0.1, decay_steps=2, end_learning_rate=0.01),
    "CosineDecay": dict(initial_learning_rate=0.1, decay_steps=2, warmup_target=0.2,
                        warmup_steps=1),
}
SCHEDULE_KEYS = {"ExponentialDecay": ["initial_learning_rate", "decay_steps", "decay_rate",
                                      "staircase"],
                 "InverseTimeDecay": ["initial_learning_rate", "decay_steps", "decay_rate",
                                      "staircase"],
                 "PiecewiseConstantDecay": ["boundaries", "values"],
                 "PolynomialDecay": ["initial_learning_rate", "decay_steps",
                                     "end_learning_rate", "power", "cycle"],
                 "CosineDecay": ["initial_learning_rate", "decay_steps", "alpha",
                                 "warmup_target", "warmup_steps"]}


def _core_args(fn):
  return [name for name in inspect.signature(fn).parameters]


CASES = (
    [("scale_by_nadam", k, lambda k, v: optax_nadam.scale_by_nadam(**{k: v}))
     for k in _core_args(optax_nadam.scale_by_nadam)]
    + [("nadam", k, lambda k, v: optax_nadam.nadam(**{k: v}))
       for k in _core_args(optax_nadam.nadam)]
    + [("nadamw", k, lambda k, v: optax_nadam.nadamw(**{k: v}))
       for k in _core_args(optax_nadam.nadamw)]
    + [("keras.Nadam", k, _keras) for k in inspect.signature(Nadam).parameters]
    + [(f"keras schedule {c}", k, lambda k, v, c=c: _schedule(c, k, v))
       for c, keys in SCHEDULE_KEYS.items() for k in keys]
)


def test_sweep_covers_every_argument():
  names = {(front, key) for front, key, _ in CASES}
  assert len(names) == len(CASES)
  for front, fn in (("scale_by_nadam", optax_nadam.scale_by_nadam),
                    ("nadam", optax_nadam.nadam), ("nadamw", optax_nadam.nadamw)):
    assert {k for f, k in names if f == front} == set(inspect.signature(fn).parameters)
  keras_keys = {k for f, k in names if f == "keras.Nadam"}
  assert keras_keys == set(inspect.signature(Nadam).parameters) | {"lr"}
  assert len(keras_keys) == 18  # the 17 keyword arguments and the lr alias
  for class_name, (_, defaults) in keras_schedules._SCHEDULES.items():
    numeric = {k for k, (_, rule) in defaults.items() if rule is not str}
    assert set(SCHEDULE_KEYS[class_name]) == numeric, class_name


@pytest.mark.parametrize("front, key, make", CASES, ids=[f"{f}-{k}" for f, k, _ in CASES])
def test_hostile_values_are_refused_by_name_or_run_finite(front, key, make):
  """Each hostile value: a named error at construction, or finite steps."""
  outcomes = []
  for value in HOSTILE:
    try:
      if key == "lr":
        with pytest.warns(DeprecationWarning):
          tx = make(key, value)
      else:
        tx = make(key, value)
    except (ValueError, TypeError) as e:
      named = key if key != "lr" else "learning_rate"
      assert named in str(e), f"{front}({key}={value!r}): {e}"
      outcomes.append("refused")
      continue
    try:
      _runs_finite(tx)
    except Exception as e:  # noqa: BLE001 -- report which value broke, whatever the error
      raise AssertionError(f"{front}({key}={value!r}) was accepted, then: "
                           f"{type(e).__name__}: {e}") from e
    outcomes.append("accepted")
  assert len(outcomes) == len(HOSTILE)


@pytest.mark.parametrize("make, text", [
    (lambda: optax_nadam.nadam(math.inf), "learning_rate must be a finite number in [0, 1.84e+19]"),
    (lambda: optax_nadam.scale_by_nadam(b1=1.0), "b1 must be a finite number in [0, 1)"),
    (lambda: optax_nadam.scale_by_nadam(eps=1e39), "eps must be a finite number in [0, 3.4e+38]"),
    (lambda: Nadam(clipnorm=math.inf), "pass None for no clipping"),
    (lambda: Nadam(loss_scale_factor=1e-45), "1 / loss_scale_factor is finite"),
    (lambda: Nadam(gradient_accumulation_steps=2**31), "[1, 2147483647]"),
    (lambda: optax_nadam.nadamw(1e-3, weight_decay=2**31), "must be <= 2"),
    (lambda: Nadam(use_ema=True, ema_overwrite_frequency=np.int64(2**40)), "int32 counter"),
    (lambda: optax_nadam.scale_by_nadam(b2=np.True_), "not a bool"),
    (lambda: Nadam(beta_1="0.9"), "beta_1 must be a number"),
    (lambda: optax_nadam.scale_by_nadam(mu_dtype=1.0), "mu_dtype must be a floating dtype"),
    (lambda: Nadam(exclude_from_weight_decay=["("]), "regular expression"),
    (lambda: optax_nadam.nadamw(mask=3.0), "tree of bools"),
])
def test_messages_name_the_range_and_what_to_do(make, text):
  with pytest.raises((ValueError, TypeError)) as info:
    make()
  assert text in str(info.value)


def test_one_rule_set_across_fronts():
  """The Keras front refuses exactly what the core refuses, under its own names."""
  for core, keras_key, values in (("b1", "beta_1", [1.0, -0.1, 0.999]),
                                  ("b2", "beta_2", [1.0, np.float32(0.5)]),
                                  ("eps", "epsilon", [-1e-9, 1e39, 3e38]),
                                  ("momentum_decay", "schedule_decay", [math.inf, 2**63])):
    for v in values:
      refused = []
      for make, kwargs in ((optax_nadam.scale_by_nadam, {core: v}), (Nadam, {keras_key: v})):
        try:
          make(**kwargs)
          refused.append(False)
        except ValueError:
          refused.append(True)
      assert refused[0] == refused[1], (core, v)


def test_scalars_of_every_kind_are_numbers_and_tracers_pass():
  for value in (0.5, 1, np.float32(0.5), np.int64(1), jnp.asarray(0.5), np.asarray(0.5)):
    _validation.number("x", value, _validation.NON_NEGATIVE)
  assert _validation.number("x", 2**63) == float(2**63)  # never an int that overflows in jit
  assert isinstance(_validation.number("x", jnp.asarray(0.5, jnp.bfloat16)), jax.Array)
  with pytest.raises(ValueError, match="scalar"):
    _validation.number("x", jnp.ones(2))
  for bad in (np.bool_(True), jnp.asarray(True), None, [0.5], "0.5", 1 + 0j):
    with pytest.raises(TypeError, match="x must be"):
      _validation.number("x", bad)
  seen = []
  jax.jit(lambda lr: seen.append(_validation.number("x", lr, _validation.LEARNING_RATE)))(0.1)
  assert isinstance(seen[0], jax.core.Tracer)
  with pytest.raises(TypeError, match="concrete int"):
    jax.jit(lambda k: _validation.integer("k", k, 1))(3)


def test_check_finite_scalar_for_imported_values():
  assert _validation.check_finite_scalar("v", np.array([2.5])) == 2.5
  with pytest.raises(ValueError, match="v is nan"):
    _validation.check_finite_scalar("v", np.array(np.nan))
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    _validation.check_finite_scalar("v", np.ones(2))
  with pytest.raises(TypeError, match="v has dtype bool"):
    _validation.check_finite_scalar("v", np.array(True))


def test_inject_hyperparams_still_passes_traced_values():
  tx = optax.inject_hyperparams(optax_nadam.nadamw)(learning_rate=0.1, weight_decay=0.5)
  state = jax.jit(tx.init)(PARAMS)
  updates, _ = jax.jit(tx.update)(GRADS[0], state, PARAMS)
  assert np.all(np.isfinite(updates["w"]))


def test_inject_hyperparams_with_a_complex_first_leaf():
  # optax.inject_hyperparams casts the hyperparameters to the first leaf's dtype: with a
  # complex64 first leaf they arrive as complex scalars with a zero imaginary part.
  params = {"a": jnp.ones(3, jnp.complex64) * (1 + 0.5j), "b": jnp.ones(2, jnp.float32)}
  grads = jax.tree.map(lambda x: 0.3 * x, params)
  injected = optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=1e-2)
  plain = optax_nadam.nadam(1e-2)
  u_inj, _ = injected.update(grads, injected.init(params), params)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  for k in params:
    np.testing.assert_allclose(u_inj[k], u_plain[k], rtol=1e-6)
  with pytest.raises(TypeError, match="learning_rate.*complex"):
    optax_nadam.nadam(learning_rate=jnp.asarray(1e-2 + 1e-3j, jnp.complex64))
