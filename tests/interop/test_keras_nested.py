"""Pairing a ``.keras`` file's variables with the Nadam's slots: frozen variables, nesting.

Issue 23, Keras half. Models are trained and saved by Keras 3 itself
(``model.fit``, ``model.save``); the truth is the live optimizer's own pairing
(by variable identity). A file is either resumed with every moment and weight
on its own variable, and continues the peer's next 20 ``train_on_batch`` steps
within 1e-5, or refused with a message whose fix, applied here, resumes it.
"""

import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from optax_nadam.interop import params_from_keras, resume_from_keras, state_to_keras
from tests.helpers import keras_models as km
from tests.helpers import reference as ref

TOL = 1e-5


def _like(model):
  return [np.zeros(v.shape, np.float32) for v in model.trainable_variables]


def _moments(state):
  """(m, v) leaves of the `ScaleByNadamState` inside a Keras-front state."""
  return (list(optax.tree_utils.tree_get(state, "m")),
          list(optax.tree_utils.tree_get(state, "v")))


def _assert_true_pairing(params, state, live):
  ms, vs = _moments(state)
  assert len(params) == len(ms) == len(live)
  for i, (p, m, v, (w0, m0, v0)) in enumerate(zip(params, ms, vs, live, strict=True)):
    np.testing.assert_array_equal(np.asarray(p), w0, err_msg=f"weight {i}")
    np.testing.assert_array_equal(np.asarray(m), m0, err_msg=f"momentum {i}")
    np.testing.assert_array_equal(np.asarray(v), v0, err_msg=f"velocity {i}")


def _continues(model, path, x, y, source=None):
  """Resumes `source` (default: the file), continues 20 steps beside the live peer."""
  loss = km.keras_loss(model)
  params, tx, state = resume_from_keras(source if source is not None else path, _like(model))
  theirs = km.peer_continues(model, x, y)
  ours, _ = ref.continue_on_loss(tx, params, state, loss, x, y, steps=km.STEPS)
  fresh, _ = ref.continue_on_loss(tx, params, tx.init(params), loss, x, y, steps=km.STEPS)
  return km.gap(ours, theirs), km.gap(fresh, theirs)


def _rebuilt_from_file(make, path, optimizer):
  """The refusals' fix: the model from its code, its Nadam built, ``load_weights(path)``."""
  model = make()
  model.compile(optimizer, "mse")
  model.optimizer.build(model.trainable_variables)
  model.load_weights(path)
  return model


def _data(shape_x, shape_y, seed=0):
  rng = np.random.RandomState(seed)
  return rng.randn(*shape_x).astype(np.float32), rng.randn(*shape_y).astype(np.float32)


# ---- point 5: a variable frozen by its own `trainable` flag ---------------------------------

@pytest.mark.slow
def test_frozen_variable_of_equal_shape_is_refused_and_the_fix_resumes(tmp_path):
  import keras

  two = km.two_variable_layer(keras, (3,), (3,))

  def make():
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), two(),
                             keras.layers.Dense(2)])

  x, y = _data((16, 3), (16, 2), 5)
  path = tmp_path / "frozen.keras"
  model = km.fit_and_save(make(), path, x, y)
  # Keras saves [w_fixed, w_train]; the optimizer holds w_train only: the file does not
  # say which of the two equal-shape variables is trainable.
  with pytest.raises(ValueError, match=r"frozen.keras: .*layers/two_variables.* which of its "
                     r"saved variables .*trainable.*model.load_weights.*resume_from_keras"):
    resume_from_keras(path, _like(model))
  with pytest.raises(ValueError, match="which of its saved variables"):
    params_from_keras(path, _like(model))
  rebuilt = _rebuilt_from_file(make, path, keras.optimizers.Nadam(0.01))
  params, _, state = resume_from_keras(rebuilt, _like(model))
  _assert_true_pairing(params, state, km.truth(model))
  resumed, fresh = _continues(rebuilt, path, x, y, source=rebuilt)
  print(f"\nfrozen w_fixed, the fix (load_weights + live model): gap {resumed:.2e}, "
        f"fresh state {fresh:.2e}")
  assert resumed <= TOL < 30 * TOL < fresh


@pytest.mark.slow
def test_frozen_variable_whose_shape_tells_it_apart_resumes(tmp_path):
  import keras

  two = km.two_variable_layer(keras, (3,), (1,))
  keras.utils.set_random_seed(6)
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), two(),
                            keras.layers.Dense(2)])
  x, y = _data((16, 3), (16, 2), 6)
  path = tmp_path / "frozen_distinct.keras"
  km.fit_and_save(model, path, x, y)
  params, _, state = resume_from_keras(path, _like(model))
  _assert_true_pairing(params, state, km.truth(model))
  resumed, fresh = _continues(model, path, x, y)
  assert resumed <= TOL < 30 * TOL < fresh


# ---- point 10: Keras layers that hold layers ------------------------------------------------

def _transformer(keras):
  layers = keras.layers
  inputs = keras.Input((5, 8))
  # No biases: the key bias's gradient is 0 in exact arithmetic (softmax ignores it), so
  # its trajectory is float rounding noise, 2.6e-3 apart after 20 steps in any two runs.
  h = layers.MultiHeadAttention(num_heads=2, key_dim=4, use_bias=False)(inputs, inputs)
  h = layers.GroupQueryAttention(head_dim=4, num_query_heads=2, num_key_value_heads=2,
                                 use_bias=False)(h, h)
  h = layers.LayerNormalization()(h + inputs)
  h = layers.Bidirectional(layers.LSTM(4, return_sequences=True))(h)  # forward, backward
  h = layers.Bidirectional(layers.GRU(4))(h)
  return keras.Model(inputs, layers.Dense(2)(h))


@pytest.mark.slow
def test_multi_head_attention_and_bidirectional_resume(tmp_path):
  # MultiHeadAttention's q/k/v kernels have equal shapes and Bidirectional's two
  # directions too; Keras saves them by attribute name (key, output, query, value;
  # backward, forward) but their order is fixed by Keras's own classes.
  import keras

  keras.utils.set_random_seed(10)
  model = _transformer(keras)
  x, y = _data((16, 5, 8), (16, 2), 10)
  path = tmp_path / "transformer.keras"
  km.fit_and_save(model, path, x, y)
  params, _, state = resume_from_keras(path, _like(model))
  _assert_true_pairing(params, state, km.truth(model))
  resumed, fresh = _continues(model, path, x, y)
  print(f"\nMultiHeadAttention, GroupQueryAttention, Bidirectional(LSTM, GRU): gap "
        f"{resumed:.2e}, fresh {fresh:.2e}")
  assert resumed <= TOL < 30 * TOL < fresh


@pytest.mark.slow
def test_known_sublayer_order_needs_the_keras_version_that_wrote_it(tmp_path):
  # The order is Keras's own: a file that does not say which Keras wrote it (or a
  # Keras whose classes were not checked) is paired only where shapes prove it.
  import io
  import json
  import zipfile

  import keras

  keras.utils.set_random_seed(11)
  model = _transformer(keras)
  x, y = _data((16, 5, 8), (16, 2), 11)
  path = tmp_path / "t.keras"
  km.fit_and_save(model, path, x, y, epochs=1)
  with zipfile.ZipFile(path) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  for version, ok in (("3.15.1", True), ("3.16.0", False), ("4.0.0", False)):
    meta = json.loads(members["metadata.json"])
    meta["keras_version"] = version
    out = tmp_path / f"t_{version}.keras"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
      for n, data in members.items():
        zf.writestr(n, json.dumps(meta) if n == "metadata.json" else data)
    out.write_bytes(buf.getvalue())
    if ok:
      resume_from_keras(out, _like(model))
    else:
      with pytest.raises(ValueError, match=rf"MultiHeadAttention.*Keras {version[:3]}"):
        resume_from_keras(out, _like(model))


@pytest.mark.slow
def test_keras_hub_style_block_is_refused_and_the_fix_resumes(tmp_path):
  # A custom layer (keras-hub's TransformerEncoder is one) holding two LayerNormalization
  # of equal shapes: its class fixes the order, but not Keras, and the file cannot say.
  import keras

  block = km.block_class(keras, ["zeta", "alpha", "mid"])

  def make():
    keras.utils.set_random_seed(12)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(block(4)(inputs)))

  x, y = _data((16, 4), (16, 2), 12)
  path = tmp_path / "hub_style.keras"
  model = km.fit_and_save(make(), path, x, y)
  with pytest.raises(ValueError, match=r"hub_style.keras: layers/block \(Block.*order.*"
                     r"model.load_weights\(path\).*resume_from_keras\(model, like\)") as e:
    resume_from_keras(path, _like(model))
  assert "attribute name (Keras 3 writes a subclassed model" not in str(e.value)
  rebuilt = _rebuilt_from_file(make, path, keras.optimizers.Nadam(0.01))
  params, _, state = resume_from_keras(rebuilt, _like(model))
  _assert_true_pairing(params, state, km.truth(model))
  resumed, fresh = _continues(rebuilt, path, x, y, source=rebuilt)
  assert resumed <= TOL < 30 * TOL < fresh


@pytest.mark.slow
def test_keras_applications_model_pairs_every_slot(tmp_path):
  # 1.5k variables, BatchNormalization everywhere (moving statistics saved beside gamma
  # and beta), SE blocks of equal shapes: the config's layer order proves the pairing.
  import keras

  keras.utils.set_random_seed(13)
  model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=3,
                                              include_preprocessing=False)
  x, y = _data((4, 32, 32, 3), (4, 3), 13)
  path = tmp_path / "mobilenet.keras"
  km.fit_and_save(model, path, x, y, epochs=1, batch_size=4)
  params, _, state = resume_from_keras(path, _like(model))
  _assert_true_pairing(params, state, km.truth(model))


# ---- the property: every accepted pairing is the true one -----------------------------------

def _property(tmp_path_factory, data):
  import keras

  model, x, y = km.random_model(keras, data.draw)
  path = tmp_path_factory.mktemp("random") / "m.keras"
  km.fit_and_save(model, path, x, y, epochs=1)
  live = km.truth(model)
  try:
    params, tx, state = resume_from_keras(path, _like(model))
  except ValueError as e:  # refused: must say why, never a crash of another kind
    assert str(path) in str(e)
    return "refused"
  _assert_true_pairing(params, state, live)
  # Export: our state written back into the live Nadam lands on the same variables.
  opt = model.optimizer
  for var in [*opt._momentums, *opt._velocities]:
    var.assign(np.zeros(var.shape, np.float32))
  state_to_keras(state, params, opt, var_list=model.trainable_variables)
  for i, (_, m0, v0) in enumerate(km.truth(model)):
    np.testing.assert_array_equal(m0, live[i][1])
    np.testing.assert_array_equal(v0, live[i][2])
  return "paired"


_PROPERTY = dict(deadline=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=2, **_PROPERTY)
@given(st.data())
def test_random_models_pair_truly_or_are_refused(tmp_path_factory, data):
  event(_property(tmp_path_factory, data))


@pytest.mark.slow
@settings(max_examples=40, **_PROPERTY)
@given(st.data())
def test_random_models_pair_truly_or_are_refused_many(tmp_path_factory, data):
  # --hypothesis-show-statistics prints how many were paired and how many refused.
  event(_property(tmp_path_factory, data))
