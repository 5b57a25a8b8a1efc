"""`optax_nadam.keras.Nadam`: the optax contract, the Keras methods, configs, errors.

Trajectory parity with the real peers, kwarg by kwarg, is in
tests/keras/test_parity.py.
"""

import copy
import doctest
import json
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nadam
import optax_nadam.keras.optimizer as keras_mod
from optax_nadam import ScaleByNadamState
from optax_nadam.keras import KerasNadamState, Nadam

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core

PARAMS = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 7, "bias": jnp.ones(3)},
          "scale": jnp.array(0.5, jnp.float32)}  # not weakly typed: one trace


# One compiled update per optimizer config for the loops below, shared across tests (equal
# optimizers are equal static arguments); eager dispatch of a Keras chain is ~0.5 s a step.
_update = jax.jit(lambda opt, grads, state, params: opt.update(grads, state, params),
                  static_argnums=0)


def _grads(seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"dense": {"kernel": jax.random.normal(keys[0], (2, 3)),
                    "bias": jax.random.normal(keys[1], (3,))},
          "scale": jax.random.normal(keys[2], ())}


FULL = dict(learning_rate=0.01, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=3,
            gradient_accumulation_steps=2, loss_scale_factor=8.0, clipvalue=1.0,
            global_clipnorm=2.0, decay=0.01)


def test_docstring_example_runs():
  result = doctest.testmod(keras_mod, verbose=False)
  assert result.attempted >= 1 and result.failed == 0


# ------------------------------------------------------------- optax contract
def test_is_a_gradient_transformation_and_chains_under_jit():
  opt = Nadam(0.01, clipnorm=1.0)
  assert isinstance(opt, optax.GradientTransformation)
  tx = optax.chain(optax.clip(5.0), opt)
  state = tx.init(PARAMS)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  # The same steps through apply_gradients on the leaves, clipping by hand.
  params, alone = PARAMS, jax.tree.leaves(PARAMS)
  alone_state = opt.init(alone)
  for t in range(5):
    g = _grads(t)
    params, state = step(params, state, g)
    clipped = jax.tree.leaves(jax.tree.map(lambda x: jnp.clip(x, -5, 5), g))
    alone, alone_state = opt.apply_gradients(list(zip(clipped, alone)), alone_state)
  chex.assert_trees_all_close(params, _unpairs(alone), rtol=1e-6)


def _unpairs(leaves):
  return jax.tree.unflatten(jax.tree.structure(PARAMS), leaves)


def test_default_equals_core_nadam():
  opt, core = Nadam(), optax_nadam.nadam()
  s1, s2 = opt.init(PARAMS), core.init(PARAMS)
  for t in range(4):
    u1, s1 = opt.update(_grads(t), s1, PARAMS)
    u2, s2 = core.update(_grads(t), s2, PARAMS)
    chex.assert_trees_all_close(u1, u2, rtol=1e-6)


def test_optax_schedule_learning_rate_equals_core():
  schedule = optax.exponential_decay(0.02, 3, 0.5)
  opt, core = Nadam(schedule), optax_nadam.nadam(schedule)
  s1, s2 = opt.init(PARAMS), core.init(PARAMS)
  for t in range(6):
    u1, s1 = opt.update(_grads(t), s1, PARAMS)
    u2, s2 = core.update(_grads(t), s2, PARAMS)
    chex.assert_trees_all_close(u1, u2, rtol=1e-6)


@pytest.mark.peers
def test_works_in_flax_nnx_optimizer():
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  pure0 = jax.tree.map(jnp.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  opt = Nadam(0.05, weight_decay=0.1, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2)
  optimizer = nnx.Optimizer(model, opt, wrt=nnx.Param)
  x = jnp.linspace(-1, 1, 12).reshape(4, 3)

  def loss(m):
    return jnp.mean((m(x) - 1.0) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)

  pure = pure0
  state = opt.init(pure)
  for _ in range(4):
    grads = jax.grad(lambda p: loss(_with(model, p)))(pure)
    updates, state = opt.update(grads, state, pure)
    pure = optax.apply_updates(pure, updates)
    train_step(model, optimizer)
  chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), pure, rtol=1e-5)
  assert np.max(np.abs(pure["kernel"] - pure0["kernel"])) > 0.05


def _with(model, pure):
  from flax import nnx

  graphdef, state = nnx.split(model)
  state = copy.copy(state)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def test_is_a_leafless_pytree_and_a_static_friendly_object():
  opt = Nadam(0.01)
  assert jax.tree.leaves(opt) == []
  assert jax.tree.map(lambda x: x, opt) is opt
  out = jax.jit(lambda o, x: o.update(x, o.init(x))[0])(opt, {"w": jnp.ones(2)})
  assert out["w"].shape == (2,)


def test_pickle_and_deepcopy_rebuild_the_same_optimizer():
  opt = Nadam(0.01, exclude_from_weight_decay=["bias"],
              **{k: v for k, v in FULL.items() if k != "learning_rate"})
  for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
    assert clone.get_config() == opt.get_config()
    a, b = opt.init(PARAMS), clone.init(PARAMS)
    update_a, update_b = jax.jit(opt.update), jax.jit(clone.update)  # compiled separately
    for t in range(3):
      a = update_a(_grads(t), a, PARAMS)[1]
      b = update_b(_grads(t), b, PARAMS)[1]
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_are_kept(dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
  opt = Nadam(0.01, weight_decay=0.1, use_ema=True, clipnorm=1.0)
  state = opt.init(params)
  grads = jax.tree.map(lambda x: x.astype(dtype), _grads(0))
  updates, state = opt.update(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(state.ema, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("kwargs", [{}, dict(weight_decay=0.1), dict(use_ema=True),
                                    dict(gradient_accumulation_steps=3), FULL])
def test_state_holds_exactly_one_findable_scale_by_nadam_state(kwargs):
  state = Nadam(**kwargs).init(PARAMS)
  assert isinstance(state, KerasNadamState)
  found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleByNadamState))
           if isinstance(x, ScaleByNadamState)]
  assert len(found) == 1
  chex.assert_trees_all_equal_shapes(found[0].m, PARAMS)


def test_importing_the_nadam_state_alone_carries_the_step_count():
  """What interop relies on: replacing ScaleByNadamState sets iterations and lr decay."""
  opt = Nadam(0.1, decay=1.0, gradient_accumulation_steps=2)
  state = opt.init(PARAMS)
  state = jax.tree.map(
      lambda x: x._replace(count=jnp.int32(4)) if isinstance(x, ScaleByNadamState) else x,
      state, is_leaf=lambda x: isinstance(x, ScaleByNadamState))
  assert int(opt.iterations(state)) == 4
  np.testing.assert_allclose(opt.current_learning_rate(state), 0.1 / (1 + 8), rtol=1e-6)


# ---------------------------------------------------------------- the methods
def test_iterations_count_updates_and_floor_with_accumulation():
  opt = Nadam(0.1, gradient_accumulation_steps=3, decay=0.5)
  state = opt.init(PARAMS)
  for t in range(7):
    assert int(opt.iterations(state)) == t // 3
    # Schedules and decay see the real step count, as in Keras 3.
    np.testing.assert_allclose(opt.current_learning_rate(state), 0.1 / (1 + 0.5 * t), rtol=1e-6)
    state = _update(opt, _grads(t), state, PARAMS)[1]


def test_accumulation_leaves_params_unchanged_between_update_steps():
  opt = Nadam(0.1, gradient_accumulation_steps=3)
  state = opt.init(PARAMS)
  for t in range(6):
    updates, state = _update(opt, _grads(t), state, PARAMS)
    moved = any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
    assert moved == (t % 3 == 2)


def test_get_slot_by_index_path_and_keystr():
  opt = Nadam(0.01)
  state = opt.update(_grads(0), opt.init(PARAMS), PARAMS)[1]
  nadam = state.core[1][0]
  assert opt.get_slot_names() == ("m", "v")
  kernel_m = nadam.m["dense"]["kernel"]
  np.testing.assert_array_equal(opt.get_slot(state, "dense/kernel", "m"), kernel_m)
  np.testing.assert_array_equal(opt.get_slot(state, "['scale']", "v"), nadam.v["scale"])
  # Leaf order is jax's: dense/bias, dense/kernel, scale.
  np.testing.assert_array_equal(opt.get_slot(state, 0, "v"), nadam.v["dense"]["bias"])
  with pytest.raises(ValueError, match="slot_name"):
    opt.get_slot(state, 0, "momentum")
  with pytest.raises(ValueError, match="'dense/nope'"):
    opt.get_slot(state, "dense/nope", "m")
  with pytest.raises(ValueError, match="index 3"):
    opt.get_slot(state, 3, "m")


def test_get_weights_set_weights_round_trip_and_variables_order():
  opt = Nadam(0.01, use_ema=True, gradient_accumulation_steps=2)
  state = opt.init(PARAMS)
  for t in range(5):
    state = _update(opt, _grads(t), state, PARAMS)[1]
  weights = opt.get_weights(state)
  assert [w.shape for w in weights] == [(), (), (3,), (2, 3), (), (3,), (2, 3), ()]
  assert int(weights[0]) == 2
  restored = opt.set_weights(opt.init(PARAMS), weights)
  for a, b in zip(opt.get_weights(restored), weights):
    np.testing.assert_array_equal(a, b)
  variables = opt.variables(state)
  # get_weights order, then 3 accumulators, then 3 EMA averages.
  assert len(variables) == 8 + 3 + 3
  for a, b in zip(variables[:8], weights):
    np.testing.assert_array_equal(a, b)


def test_set_weights_validates_count_shape_and_dtype():
  opt = Nadam()
  state = opt.init(PARAMS)
  weights = opt.get_weights(state)
  with pytest.raises(ValueError, match="expected 8 weights"):
    opt.set_weights(state, weights[:-1])
  bad = list(weights)
  bad[3] = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match=r"weights\[3\] \(m\) has shape \(3, 2\)"):
    opt.set_weights(state, bad)
  bad = list(weights)
  bad[5] = np.zeros(3, np.int32)
  with pytest.raises(TypeError, match=r"weights\[5\] \(v\) has dtype int32"):
    opt.set_weights(state, bad)
  bad = list(weights)
  bad[0] = np.float32(3.0)
  with pytest.raises(TypeError, match=r"weights\[0\] \(iterations\)"):
    opt.set_weights(state, bad)
  with pytest.raises(TypeError, match="list of arrays"):
    opt.set_weights(state, {"a": 1})


def test_minimize_get_gradients_get_updates_agree():
  def loss(p):
    return jnp.sum(p["dense"]["kernel"] ** 2) + jnp.sum(jnp.sin(p["dense"]["bias"])) + p["scale"]

  # loss_scale_factor: minimize scales the loss and the update unscales it.
  opt = Nadam(0.01, loss_scale_factor=1024.0, weight_decay=0.01)
  plain = Nadam(0.01, weight_decay=0.01)
  grads = opt.get_gradients(loss, PARAMS)
  chex.assert_trees_all_close(grads, jax.grad(loss)(PARAMS))
  p1, s1 = opt.minimize(loss, PARAMS, opt.init(PARAMS))
  leaves = jax.tree.leaves(PARAMS)
  leaves, _ = plain.apply_gradients(list(zip(jax.tree.leaves(grads), leaves)), plain.init(leaves))
  chex.assert_trees_all_close(p1, _unpairs(leaves), rtol=1e-6)
  updates, s3 = opt.get_updates(loss, PARAMS, opt.init(PARAMS))
  chex.assert_trees_all_close(optax.apply_updates(PARAMS, updates), p1, rtol=1e-6)
  chex.assert_trees_all_close(s1, s3)


def test_update_needs_params_for_weight_decay_and_ema():
  for kwargs in (dict(weight_decay=0.1), dict(use_ema=True)):
    opt = Nadam(**kwargs)
    with pytest.raises(ValueError, match="needs `params`"):
      opt.update(_grads(0), opt.init(PARAMS))


def test_exclude_from_weight_decay_method_refuses_with_the_fix():
  """Keras calls it for its side effect; an immutable optimizer says what to write instead."""
  opt = Nadam(weight_decay=0.1)
  with pytest.raises(TypeError, match="var_list"):
    opt.exclude_from_weight_decay(var_list=[PARAMS["scale"]])
  with pytest.raises(TypeError, match=r"exclude_from_weight_decay=\['bias'\]"):
    opt.exclude_from_weight_decay(var_names=["bias"])
  assert opt.get_config()["exclude_from_weight_decay"] == []
  with pytest.raises(TypeError, match="list of strings"):
    Nadam(weight_decay=0.1, exclude_from_weight_decay=[3])
  rebound = opt.replace(exclude_from_weight_decay=["bias"])
  assert rebound.get_config()["exclude_from_weight_decay"] == ["bias"]
  assert rebound.config == Nadam(weight_decay=0.1, exclude_from_weight_decay=["bias"]).config
  assert opt.config.exclude_from_weight_decay == ()


def test_optimizer_is_immutable_and_its_config_frozen_and_hashable():
  import dataclasses

  opt = Nadam(**FULL)
  with pytest.raises(AttributeError, match="immutable"):
    opt.config = None
  with pytest.raises(dataclasses.FrozenInstanceError):
    opt.config.learning_rate = 1.0
  assert hash(opt.config) == hash(Nadam(**FULL).config)
  assert opt.config == Nadam(**FULL).config
  schedule = dict(CONFIGS[3]["learning_rate"])
  assert hash(Nadam(schedule).config) == hash(Nadam(copy.deepcopy(schedule)).config)


def test_equal_configs_give_equal_equally_hashed_optimizers():
  schedule = dict(CONFIGS[3]["learning_rate"])
  for kwargs in ({}, {"learning_rate": 0.01}, FULL, {"learning_rate": schedule},
                 {"exclude_from_weight_decay": ["bias"], "weight_decay": 0.1}):
    a, b = Nadam(**kwargs), Nadam(**copy.deepcopy(kwargs))
    assert a is not b and a.update is not b.update
    assert a == b and not a != b and hash(a) == hash(b)
    for clone in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a), a.replace()):
      assert clone == a and hash(clone) == hash(a)
  with pytest.warns(DeprecationWarning, match="lr"):
    deprecated = Nadam(lr=0.01)
  assert Nadam(0.01) == Nadam(learning_rate=0.01) == deprecated == Nadam(1e-2, 0.9)
  assert len({Nadam(0.01), Nadam(0.01), Nadam(0.02), Nadam(0.01, name="other")}) == 3
  # Unequal: any field differs, or the other object is not a Nadam (not even its own tuple).
  opt = Nadam(0.01)
  for other in (Nadam(0.02), Nadam(0.01, schedule_decay=1.0), Nadam(0.01, clipnorm=1.0),
                (opt.init, opt.update), optax.GradientTransformationExtraArgs(opt.init,
                                                                              opt.update)):
    assert opt != other and other != opt and not opt == other and not other == opt
  with pytest.raises(TypeError, match="NadamConfig"):  # built from a validated config only
    Nadam._create(opt.config.kwargs())
  # A Python callable learning rate compares by identity (a config cannot hold it).
  sched = optax.exponential_decay(0.01, 10, 0.5)
  assert Nadam(sched) == Nadam(sched)
  assert Nadam(sched) != Nadam(optax.exponential_decay(0.01, 10, 0.5))


def test_jit_traces_once_for_equal_optimizers_as_a_static_argument():
  traces = []

  def step(opt, params, grads):
    traces.append(opt)
    updates, _ = opt.update(grads, opt.init(params), params)
    return optax.apply_updates(params, updates)

  once = jax.jit(chex.assert_max_traces(step, n=1), static_argnums=0)
  outs = [once(Nadam(**FULL), PARAMS, _grads(0)) for _ in range(3)]  # three equal optimizers
  assert len(traces) == 1
  for out in outs[1:]:
    chex.assert_trees_all_equal(out, outs[0])
  counted = jax.jit(step, static_argnums=0)
  counted(Nadam(**FULL), PARAMS, _grads(0))
  counted(Nadam(**FULL), PARAMS, _grads(1))
  assert len(traces) == 2
  counted(Nadam(**{**FULL, "learning_rate": 0.02}), PARAMS, _grads(0))  # another config
  assert len(traces) == 3
  # Equal optimizers also give equal tree definitions (static pytree nodes).
  assert jax.tree.structure(Nadam(0.01)) == jax.tree.structure(Nadam(0.01))
  assert jax.tree.structure(Nadam(0.01)) != jax.tree.structure(Nadam(0.02))


def test_defaults_are_written_once_in_the_config():
  import dataclasses
  import inspect

  from optax_nadam.keras.config import DEFAULTS, NadamConfig

  params = inspect.signature(Nadam).parameters
  fields = {f.name: f.default for f in dataclasses.fields(NadamConfig)}
  assert {k: params[k].default for k in fields} == fields
  assert Nadam().config == NadamConfig.create() == NadamConfig()
  assert Nadam().get_config() == DEFAULTS
  assert repr(Nadam()) == "Nadam()"


def test_real_signature_lists_every_keyword():
  import inspect

  params = inspect.signature(Nadam).parameters
  assert list(params)[:5] == ["learning_rate", "beta_1", "beta_2", "epsilon", "name"]
  assert set(params) >= set(Nadam().get_config()) | {"lr"}
  assert params["weight_decay"].kind is inspect.Parameter.KEYWORD_ONLY


# ------------------------------------------------------------ apply_gradients
def test_apply_gradients_errors():
  opt = Nadam()
  params = [jnp.ones(3), jnp.ones((2, 2))]
  state = opt.init(params)
  with pytest.raises(ValueError, match="No gradients provided for any variable"):
    opt.apply_gradients([(None, params[0]), (None, params[1])], state)
  with pytest.raises(TypeError, match="iterable of"):
    opt.apply_gradients(3, state)
  with pytest.raises(TypeError, match=r"grads_and_vars\[1\] must be a \(gradient, variable\)"):
    opt.apply_gradients([(jnp.ones(3), params[0]), jnp.ones(4)], state)
  with pytest.raises(TypeError, match=r"grads_and_vars\[0\] must hold arrays"):
    opt.apply_gradients([("g", params[0]), (jnp.ones((2, 2)), params[1])], state)
  with pytest.raises(ValueError, match=r"grads_and_vars\[1\] has shape \(4,\)"):
    opt.apply_gradients([(jnp.ones(3), params[0]), (jnp.ones(4), params[1])], state)
  with pytest.raises(ValueError, match=r"grads_and_vars\[w\] has shape \(2,\)"):
    opt.apply_gradients({"w": (jnp.ones(2), jnp.ones(3))}, opt.init({"w": jnp.ones(3)}))


def test_apply_gradients_none_leaves_variable_and_slots_untouched():
  opt = Nadam(0.1, weight_decay=0.5)
  params = {"a": jnp.ones(3), "b": jnp.full(2, 2.0)}
  state = opt.init(params)
  params, state = opt.apply_gradients({"a": (jnp.ones(3), params["a"]),
                                       "b": (jnp.ones(2), params["b"])}, state)
  before_b, m_b = params["b"], opt.get_slot(state, "b", "m")
  with pytest.warns(UserWarning, match=r"\['b'\]"):
    params, state = opt.apply_gradients({"a": (jnp.ones(3), params["a"]),
                                         "b": (None, params["b"])}, state)
  np.testing.assert_array_equal(params["b"], before_b)
  np.testing.assert_array_equal(opt.get_slot(state, "b", "m"), m_b)
  assert int(opt.iterations(state)) == 2


# ------------------------------------------------------------------ kwargs
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(momentum=0.9), TypeError, "momentum"),
    (dict(amsgrad=True, nesterov=True), TypeError, "amsgrad"),
    (dict(beta_1=1.0), ValueError, "beta_1"),
    (dict(beta_2=-0.1), ValueError, "beta_2"),
    (dict(epsilon=-1.0), ValueError, "epsilon"),
    (dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
    (dict(schedule_decay=-0.1), ValueError, "schedule_decay"),
    (dict(decay=-1), ValueError, "decay"),
    (dict(clipnorm=0.0), ValueError, "clipnorm"),
    (dict(clipvalue=-1.0), ValueError, "clipvalue"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "clipnorm and global_clipnorm"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(use_ema=1), TypeError, "use_ema"),
    (dict(ema_momentum=1.5), ValueError, "ema_momentum"),
    (dict(ema_overwrite_frequency=0), ValueError, "ema_overwrite_frequency"),
    (dict(ema_overwrite_frequency=2.5), TypeError, "ema_overwrite_frequency"),
    (dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
    (dict(gradient_accumulation_steps=True), TypeError, "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps"),
    (dict(name=3), TypeError, "name"),
    (dict(learning_rate=0.1, lr=0.2), ValueError, "not both"),
])
def test_bad_kwargs_are_refused_by_name(kwargs, error, match):
  with pytest.raises(error, match=match):
    with pytest.warns(DeprecationWarning) if "lr" in kwargs else _nothing():
      Nadam(**kwargs)


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# ------------------------------------------------------------------ config
CONFIGS = [
    {},
    dict(learning_rate=0.02, beta_1=0.85, beta_2=0.99, epsilon=1e-6, schedule_decay=0.01,
         decay=0.001, clipvalue=0.5, clipnorm=1.0, name="opt"),
    dict(FULL, exclude_from_weight_decay=["bias", "scale$"]),
    dict(learning_rate={"module": "keras.optimizers.schedules", "class_name": "CosineDecay",
                        "config": {"initial_learning_rate": 0.1, "decay_steps": 100,
                                   "alpha": 0.1, "name": "c", "warmup_target": 0.2,
                                   "warmup_steps": 10}, "registered_name": None}),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_config_json_round_trip_is_exact(kwargs):
  opt = Nadam(**kwargs)
  config = opt.get_config()
  text = json.dumps(config)
  rebuilt = Nadam.from_config(json.loads(text))
  assert rebuilt.get_config() == config
  assert json.dumps(rebuilt.get_config()) == text
  assert rebuilt == opt
  # Each one's own update, compiled separately (eager dispatch of the full chain costs ~7 s).
  update_a, update_b = jax.jit(opt.update), jax.jit(rebuilt.update)
  a, b = opt.init(PARAMS), rebuilt.init(PARAMS)
  for t in range(3):
    ua, a = update_a(_grads(t), a, PARAMS)
    ub, b = update_b(_grads(t), b, PARAMS)
    chex.assert_trees_all_equal(ua, ub)


def test_get_config_refuses_a_python_callable_learning_rate():
  with pytest.raises(TypeError, match="callable"):
    Nadam(optax.constant_schedule(0.1)).get_config()


@pytest.mark.parametrize("config, error, match", [
    ({"learning_rate": 0.1, "momentum": 0.9}, ValueError, "momentum"),
    ({"beta_1": "0.9"}, TypeError, "beta_1"),
    ({"beta_2": 2.0}, ValueError, "beta_2"),
    ({"use_ema": "yes"}, TypeError, "use_ema"),
    ({"jit_compile": "x"}, TypeError, "jit_compile"),
    ({"learning_rate": "__import__('os').system('echo hi')"}, TypeError, "learning_rate"),
    ({"learning_rate": {"class_name": "Evil", "config": {}}}, ValueError, "Evil"),
    ({"learning_rate": {"class_name": "ExponentialDecay", "config": {
        "initial_learning_rate": 0.1, "decay_steps": 10}}}, ValueError, "decay_rate"),
    ({"learning_rate": {"class_name": "ExponentialDecay", "config": {
        "initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5}}},
     ValueError, "decay_steps"),
    ({"learning_rate": {"class_name": "ExponentialDecay", "config": {
        "initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": 0.5, "x": 1}}},
     ValueError, r"\['x'\]"),
    ({"learning_rate": {"class_name": "PolynomialDecay", "config": {
        "initial_learning_rate": 0.1, "decay_steps": 5, "cycle": "no"}}}, TypeError, "cycle"),
    ({"learning_rate": {"class_name": "PiecewiseConstantDecay", "config": {
        "boundaries": [1, 2], "values": [0.1]}}}, ValueError, "values"),
    ({"use_ema": False, "decay": 0.004}, ValueError, "ambiguous"),
    ([("learning_rate", 0.1)], TypeError, "dict"),
])
def test_bad_configs_are_refused_by_key(config, error, match):
  with pytest.raises(error, match=match):
    Nadam.from_config(config)


@pytest.mark.parametrize("config, psi, decay", [
    ({"learning_rate": 0.1, "schedule_decay": 0.02, "decay": 0.5}, 0.02, 0.5),  # ours
    ({"learning_rate": 0.1, "use_ema": False}, 1.0, 0.0),  # Keras 3 / tf-keras
    ({"learning_rate": 0.1, "decay": 0.01}, 0.01, 0.0),  # tf-keras legacy
    ({"learning_rate": 0.1}, 0.004, 0.0),  # nothing to go by: the seed's default
])
def test_psi_rule_of_from_config(config, psi, decay):
  c = Nadam.from_config(config).get_config()
  assert (c["schedule_decay"], c["decay"]) == (psi, decay)


# -------------------------------------------------------------- schedules
SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.6)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.6,
                              staircase=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5,
                              staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[5, 12, 20], values=[0.1, 0.05, 0.01, 0.001])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=15)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=15, end_learning_rate=0.01,
                             power=2.0, cycle=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=20, warmup_target=0.1,
                         warmup_steps=6)),
]


@pytest.mark.peers
@pytest.mark.parametrize("class_name, config", SCHEDULES)
def test_keras_schedule_configs_match_keras_schedules(class_name, config):
  import keras

  theirs = getattr(keras.optimizers.schedules, class_name)(**config)
  serialized = keras.optimizers.schedules.serialize(theirs)
  opt = Nadam(serialized, schedule_decay=1.0)
  state = opt.init(PARAMS)
  for step in range(40):
    ours = float(opt.current_learning_rate(state))
    np.testing.assert_allclose(ours, float(theirs(step)), rtol=2e-6, atol=1e-9,
                               err_msg=f"{class_name} step {step}")
    state = opt.update(_grads(step), state, PARAMS)[1]


def test_works_under_inject_hyperparams():
  tx = optax.inject_hyperparams(Nadam)(learning_rate=0.1, weight_decay=0.01, decay=0.1,
                                       ema_momentum=0.9, schedule_decay=0.004)
  ref = Nadam(0.1, weight_decay=0.01, decay=0.1, ema_momentum=0.9)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  ref_params, ref_state = PARAMS, ref.init(PARAMS)
  for t in range(3):
    params, state = step(params, state, _grads(t))
    updates, ref_state = ref.update(_grads(t), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-6)
  state.hyperparams["learning_rate"] = jnp.array(0.0)
  chex.assert_trees_all_close(step(params, state, _grads(9))[0], params)


def test_none_gradient_mask_covers_any_params_shaped_state():
  """The mask finds params-shaped state by structure: a new stateful stage is covered."""
  from optax_nadam.keras.state import keep_where_absent

  params = {"a": jnp.ones(3), "b": jnp.full(2, 2.0)}
  tx = optax.chain(optax.trace(0.9), optax.scale_by_rms(), optax_nadam.scale_by_nadam())
  old = tx.init(params)
  grads = {"a": jnp.ones(3), "b": jnp.ones(2)}
  _, new = tx.update(grads, old, params)
  kept = keep_where_absent(new, old, {"a": True, "b": False})
  for got, before, after in zip(jax.tree.leaves(kept), jax.tree.leaves(old),
                                jax.tree.leaves(new)):
    # Scalars (counts, mu-product) always move; per-leaf arrays move only for "a".
    want = after if got.shape != (2,) else before
    np.testing.assert_array_equal(got, want)
  assert kept[0].trace["b"].sum() == 0 and kept[0].trace["a"].sum() > 0
