"""`optax_nadam.keras.Nadam` against the real peers, kwarg by kwarg.

tf-keras legacy Nadam (the seed's class) for the seed's kwargs; Keras 3 Nadam
(jax backend, our ``schedule_decay=1.0``) for Keras 3's. Each test prints
``GAP <kwarg> vs <peer>: <max gap>``, the max over steps and leaves of
|ours - peer| / (largest |param| of that leaf); collect them with
``pytest -s -q tests/keras/test_parity.py | grep GAP``.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import optax_nadam
from optax_nadam.keras import Nadam
from tests.helpers import reference as ref

STEPS = 60
TOL = 1e-5  # fp32 rounding, relative to the param scale
NAMES = ["kernel", "bias", "conv", "scale"]  # the "mixed" shapes, in order


def _problem(steps=STEPS, seed=0):
  return ref.make_problem(ref.SHAPES["mixed"], steps, seed=seed)


def _check(label, peer_name, ours, peer, moved=True):
  gap = ref.max_rel_gap(ours, peer, ref.param_scale(peer))
  print(f"GAP {label} vs {peer_name}: {gap:.2e}")
  assert gap <= TOL, f"{label}: gap {gap:.3g} to {peer_name} > {TOL}"
  # The peer really moved (a comparison of frozen trajectories proves nothing).
  if moved:
    assert max(np.max(np.abs(a - b)) for a, b in zip(peer[-1], peer[0])) > 100 * TOL
  return gap


def run_ours(opt, params, grads):
  """Jitted optax update loop; returns the params after each step and the state."""
  return ref.run_ours(opt, params, grads, with_state=True)


def run_ours_named(opt, params, grads):
  """`apply_gradients` with a {name: (grad, var)} dict; None grads allowed."""
  ps = dict(zip(NAMES, (jnp.asarray(x) for x in params)))
  state = opt.init(ps)
  history = []
  for gs in grads:
    pairs = {n: (None if g is None else jnp.asarray(g), ps[n]) for n, g in zip(NAMES, gs)}
    ps, state = opt.apply_gradients(pairs, state)
    history.append([np.asarray(ps[n]) for n in NAMES])
  return history, state


def run_tf_legacy(params, grads, **kwargs):
  """tf_keras.optimizers.legacy.Nadam(**kwargs), a tf.function step."""
  return ref.tf_legacy_run(params, grads, **kwargs)


def run_keras3(params, grads, exclude=None, **kwargs):
  """keras.optimizers.Nadam(**kwargs) on variables named NAMES; None grads allowed."""
  return ref.keras3_run(params, grads, names=NAMES, exclude=exclude, **kwargs)


# ---------------------------------------------------------------- tf-keras legacy
LEGACY = {
    "default": {},
    "learning_rate+betas+epsilon": dict(learning_rate=0.02, beta_1=0.85, beta_2=0.99,
                                        epsilon=1e-6),
    "schedule_decay": dict(learning_rate=0.01, schedule_decay=0.05),
    "clipvalue": dict(learning_rate=0.01, clipvalue=0.3),
    "clipnorm": dict(learning_rate=0.01, clipnorm=0.5),
    "global_clipnorm": dict(learning_rate=0.01, global_clipnorm=1.0),
    "clipvalue+clipnorm": dict(learning_rate=0.01, clipvalue=0.5, clipnorm=0.8),
    "clipvalue+global_clipnorm": dict(learning_rate=0.01, clipvalue=0.5, global_clipnorm=1.5),
}


@pytest.mark.parametrize("label", list(LEGACY))
def test_seed_kwargs_match_tf_keras_legacy(label):
  params, grads = _problem()
  kwargs = LEGACY[label]
  peer, _ = run_tf_legacy(params, grads, **kwargs)
  ours, _ = run_ours(Nadam(**kwargs), params, grads)
  _check(label, "tf-keras legacy", ours, peer)


def test_clipping_is_active_in_the_clipping_cases():
  # Guards the clipping parity tests: with these gradients every clip bites.
  _, grads = _problem()
  norms = [max(float(np.linalg.norm(g)) for g in gs) for gs in grads]
  values = [max(float(np.max(np.abs(g))) for g in gs) for gs in grads]
  globals_ = [float(np.sqrt(sum(np.sum(g * g) for g in gs))) for gs in grads]
  assert min(norms) > 0.8 and min(values) > 0.5 and min(globals_) > 1.5


def test_lr_alias_warns_and_matches_tf_keras_legacy():
  params, grads = _problem()
  with pytest.warns(DeprecationWarning, match="lr"):
    opt = Nadam(lr=0.02)
  peer, _ = run_tf_legacy(params, grads, lr=0.02)
  ours, _ = run_ours(opt, params, grads)
  _check("lr (alias)", "tf-keras legacy", ours, peer)


def test_get_weights_matches_tf_keras_legacy_order_and_values():
  params, grads = _problem(steps=30)
  _, peer_opt = run_tf_legacy(params, grads, learning_rate=0.01)
  opt = Nadam(0.01)
  _, state = run_ours(opt, params, grads)
  ours, theirs = opt.get_weights(state), peer_opt.get_weights()
  assert len(ours) == len(theirs) == 2 + 2 * len(params)
  assert int(ours[0]) == int(theirs[0]) == 30 and ours[0].dtype == np.int64
  for i, (a, b) in enumerate(zip(ours[1:], theirs[1:]), start=1):
    assert a.shape == b.shape and a.dtype == b.dtype, i
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9, err_msg=f"weight {i}")


def test_set_weights_from_tf_keras_legacy_continues_its_trajectory():
  params, grads = _problem(steps=50)
  peer, peer_opt = run_tf_legacy(params, grads[:20], learning_rate=0.01)
  weights = peer_opt.get_weights()
  import tensorflow as tf

  # The peer's own set_weights into a fresh optimizer on fresh variables.
  vs = [tf.Variable(x) for x in peer[-1]]
  peer_opt2 = type(peer_opt)(learning_rate=0.01)
  peer_opt2._create_all_weights(vs)
  peer_opt2.set_weights(weights)
  history_peer = []
  for gs in grads[20:]:
    peer_opt2.apply_gradients(zip([tf.constant(g) for g in gs], vs))
    history_peer.append([v.numpy().copy() for v in vs])

  opt = Nadam(0.01)
  ps = [jnp.asarray(x) for x in peer[-1]]
  state = opt.set_weights(opt.init(ps), weights)
  assert int(opt.iterations(state)) == 20
  history = []
  for gs in grads[20:]:
    ps, state = opt.apply_gradients(list(zip([jnp.asarray(g) for g in gs], ps)), state)
    history.append([np.asarray(x) for x in ps])
  _check("set_weights (from get_weights)", "tf-keras legacy", history, history_peer)


def test_legacy_config_trains_on_the_legacy_trajectory():
  import tf_keras

  params, grads = _problem()
  kwargs = dict(learning_rate=0.02, beta_1=0.85, epsilon=1e-6, schedule_decay=0.01,
                clipvalue=0.4)
  peer, peer_opt = run_tf_legacy(params, grads, **kwargs)
  config = peer_opt.get_config()  # after use: np.float32 values, psi under "decay"
  assert "decay" in config and "schedule_decay" not in config
  opt = Nadam.from_config(config)
  assert opt.get_config()["schedule_decay"] == pytest.approx(0.01)
  assert opt.get_config()["decay"] == 0.0
  ours, _ = run_ours(opt, params, grads)
  _check("from_config (tf-keras legacy config)", "tf-keras legacy", ours, peer)
  fresh = tf_keras.optimizers.legacy.Nadam(**kwargs).get_config()
  assert Nadam.from_config(fresh).get_config()["schedule_decay"] == 0.01


# ------------------------------------------------------------------ decay (lr)
def test_decay_is_inverse_time_learning_rate_decay():
  """`decay` is documented lr decay; tf-keras legacy drops it, so no legacy peer.

  Compared (1) with our core and an optax schedule lr / (1 + decay * step), and
  (2) with Keras 3 Nadam with InverseTimeDecay(lr, decay_steps=1,
  decay_rate=decay) and psi = 1.
  """
  params, grads = _problem()
  lr, decay = 0.02, 0.05
  core = optax_nadam.nadam(lambda step: lr / (1.0 + decay * step))
  peer_core, _ = run_ours(core, params, grads)
  ours, _ = run_ours(Nadam(lr, decay=decay), params, grads)
  _check("decay", "our core + optax inverse-time schedule", ours, peer_core)

  import keras

  schedule = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)
  peer3, _ = run_keras3(params, grads, learning_rate=schedule)
  ours3, _ = run_ours(Nadam(lr, decay=decay, schedule_decay=1.0), params, grads)
  _check("decay (psi=1)", "Keras 3 + InverseTimeDecay", ours3, peer3)
  # And the decay is real: it differs from no decay by far more than the tolerance.
  plain, _ = run_ours(Nadam(lr), params, grads)
  assert ref.max_rel_gap(ours, plain, ref.param_scale(plain)) > 100 * TOL


# ------------------------------------------------------------------------ Keras 3
KERAS3 = {
    "schedule_decay=1 (Keras 3 default)": ({}, None),
    "weight_decay": (dict(learning_rate=0.01, weight_decay=0.05), None),
    "weight_decay+exclude_from_weight_decay": (
        dict(learning_rate=0.01, weight_decay=0.05), ["bias", "sca"]),
    "use_ema": (dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9), None),
    "use_ema+ema_overwrite_frequency": (
        dict(learning_rate=0.01, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=5),
        None),
    "loss_scale_factor": (dict(learning_rate=0.01, loss_scale_factor=128.0), None),
    "gradient_accumulation_steps": (
        dict(learning_rate=0.01, gradient_accumulation_steps=3), None),
    "clipnorm": (dict(learning_rate=0.01, clipnorm=0.5), None),
    "clipvalue": (dict(learning_rate=0.01, clipvalue=0.3), None),
    "global_clipnorm": (dict(learning_rate=0.01, global_clipnorm=1.0), None),
    "accumulation+ema+overwrite+weight_decay+clipnorm+schedule": (
        dict(learning_rate={"class_name": "ExponentialDecay", "config": dict(
            initial_learning_rate=0.02, decay_steps=7, decay_rate=0.5)},
             gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.7,
             ema_overwrite_frequency=3, weight_decay=0.1, clipnorm=0.7), ["conv"]),
}


def _keras3_kwargs(kwargs):
  import keras

  kwargs = dict(kwargs)
  if isinstance(kwargs.get("learning_rate"), dict):
    spec = kwargs["learning_rate"]
    cls = getattr(keras.optimizers.schedules, spec["class_name"])
    kwargs["learning_rate"] = cls(**spec["config"])
  return kwargs


@pytest.mark.parametrize("label", list(KERAS3))
def test_keras3_kwargs_match_keras3(label):
  kwargs, exclude = KERAS3[label]
  params, grads = _problem()
  peer, peer_opt = run_keras3(params, grads, exclude=exclude, **_keras3_kwargs(kwargs))
  opt = Nadam(schedule_decay=1.0, exclude_from_weight_decay=exclude or [], **kwargs)
  ours, state = run_ours_named(opt, params, grads)
  _check(label, "Keras 3", ours, peer)
  assert int(opt.iterations(state)) == int(peer_opt.iterations)
  if kwargs.get("use_ema"):
    averages = [np.asarray(a.value) for a in peer_opt._model_variables_moving_average]
    ema = [np.asarray(state.ema[n]) for n in NAMES]
    _check(label + " (EMA averages)", "Keras 3", [ema], [averages], moved=False)


def test_keras3_preset_takes_keras3s_arguments_and_defaults():
  import inspect

  import keras

  theirs = inspect.signature(keras.optimizers.Nadam.__init__).parameters
  ours = inspect.signature(Nadam.keras3).parameters
  positional = [n for n, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
  assert [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
  for name in positional:
    if name != "name":  # Keras 3: None, named "nadam" when built
      assert ours[name].default == theirs[name].default, name
  assert Nadam.keras3().get_config() == {**Nadam().get_config(), "name": "nadam",
                                         "schedule_decay": 1.0}
  with pytest.raises(TypeError, match="schedule_decay"):
    Nadam.keras3(schedule_decay=0.004)


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(learning_rate=0.02), id="learning_rate"),
    pytest.param(dict(learning_rate=0.01, beta_1=0.85, epsilon=1e-6, weight_decay=0.05,
                      use_ema=True, ema_overwrite_frequency=7, clipnorm=0.5,
                      gradient_accumulation_steps=2),
                 id="betas+weight_decay+ema+clipnorm+accumulation", marks=pytest.mark.slow),
])
def test_keras3_preset_matches_keras3_and_the_default_does_not(kwargs):
  params, grads = _problem()
  peer, peer_opt = run_keras3(params, grads, **kwargs)
  ours, state = run_ours_named(Nadam.keras3(**kwargs), params, grads)
  _check(f"Nadam.keras3({', '.join(kwargs)})", "Keras 3", ours, peer)
  assert int(Nadam.keras3(**kwargs).iterations(state)) == int(peer_opt.iterations)
  # What a Keras 3 user who writes Nadam(...) gets: tf-keras legacy's schedule, far off.
  legacy, _ = run_ours_named(Nadam(**kwargs), params, grads)
  assert ref.max_rel_gap(legacy, peer, ref.param_scale(peer)) > 100 * TOL


def test_weight_decay_exclusion_really_excludes():
  params, grads = _problem(steps=10)
  opt = Nadam(0.01, weight_decay=0.5, schedule_decay=1.0, exclude_from_weight_decay=["bias"])
  with_excl, _ = run_ours_named(opt, params, grads)
  without, _ = run_ours_named(Nadam(0.01, weight_decay=0.5, schedule_decay=1.0), params, grads)
  plain, _ = run_ours_named(Nadam(0.01, schedule_decay=1.0), params, grads)
  bias = NAMES.index("bias")
  np.testing.assert_allclose(with_excl[-1][bias], plain[-1][bias], rtol=1e-6)
  assert np.max(np.abs(without[-1][bias] - plain[-1][bias])) > 1e-3
  np.testing.assert_allclose(with_excl[-1][0], without[-1][0], rtol=1e-6)


def test_none_gradients_match_keras3_and_tf_keras_legacy():
  import tensorflow as tf
  import tf_keras

  params, grads = _problem(steps=30)
  # "bias" has no gradient on even steps, "scale" never has one.
  grads = [[None if (n == "bias" and t % 2 == 0) or n == "scale" else g
            for n, g in zip(NAMES, gs)] for t, gs in enumerate(grads)]
  with pytest.warns(UserWarning, match="Gradients do not exist"):
    peer3, _ = run_keras3(params, grads, learning_rate=0.01)
  with pytest.warns(UserWarning, match="Gradients do not exist"):
    ours3, state = run_ours_named(Nadam(0.01, schedule_decay=1.0), params, grads)
  _check("None gradients", "Keras 3", ours3, peer3)
  np.testing.assert_array_equal(ours3[-1][3], params[3])
  assert float(np.max(np.abs(np.asarray(state.core[1][0].m["scale"])))) == 0.0

  vs = [tf.Variable(x) for x in params]
  legacy = tf_keras.optimizers.legacy.Nadam(0.01)
  peer = []
  for gs in grads:
    legacy.apply_gradients([(None if g is None else tf.constant(g), v)
                            for g, v in zip(gs, vs) if g is not None])
    peer.append([v.numpy().copy() for v in vs])
  with pytest.warns(UserWarning):
    ours, _ = run_ours_named(Nadam(0.01), params, grads)
  _check("None gradients", "tf-keras legacy", ours, peer)


def test_keras3_config_trains_on_the_keras3_trajectory():
  import keras

  params, grads = _problem()
  kwargs = dict(learning_rate=0.02, beta_1=0.85, weight_decay=0.05, use_ema=True,
                ema_momentum=0.9, ema_overwrite_frequency=7, clipvalue=0.5)
  peer, peer_opt = run_keras3(params, grads, **kwargs)
  config = peer_opt.get_config()
  assert "use_ema" in config and "decay" not in config
  opt = Nadam.from_config(config)
  assert opt.get_config()["schedule_decay"] == 1.0
  ours, _ = run_ours_named(opt, params, grads)
  _check("from_config (Keras 3 config)", "Keras 3", ours, peer)
  # A Keras 3 config holding a schedule, serialised to JSON and back.
  schedule = keras.optimizers.schedules.PolynomialDecay(0.05, 20, end_learning_rate=0.001)
  config = json.loads(json.dumps(keras.optimizers.Nadam(schedule).get_config()))
  peer, _ = run_keras3(params, grads, learning_rate=schedule)
  ours, _ = run_ours_named(Nadam.from_config(config), params, grads)
  _check("from_config (Keras 3 config, PolynomialDecay)", "Keras 3", ours, peer)


def test_tf_keras_new_optimizer_config_uses_psi_one():
  import tf_keras

  config = tf_keras.optimizers.Nadam(0.02).get_config()
  assert config["is_legacy_optimizer"] is False
  opt = Nadam.from_config(config)
  assert opt.get_config()["schedule_decay"] == 1.0
  assert opt.get_config()["learning_rate"] == pytest.approx(0.02)
