"""Keras sources whose files leave something out: weight-decay exclusions, bfloat16, the
non-legacy tf-keras Nadam, tf-keras SavedModels (issue 23, Keras half).

Each file is written by the real stack (``model.fit`` then ``model.save`` or
``tf.train.Checkpoint``), then the peer continues 20 ``train_on_batch`` steps.
A file either resumes within 1e-5 of that (bfloat16: within bfloat16's own
rounding, see the test) or is refused with a message whose fix, applied here,
works.
"""

import numpy as np
import pytest

from optax_nadam import keras as okeras
from optax_nadam.interop import params_from_keras, resume_from_keras
from tests.helpers import keras_models as km
from tests.helpers import reference as ref

TOL = 1e-5


def _data(seed, n_in=3, n_out=2):
  rng = np.random.RandomState(seed)
  return rng.randn(16, n_in).astype(np.float32), rng.randn(16, n_out).astype(np.float32)


def _mlp_loss(params, x, y):  # Dense(4, tanh) -> Dense(2), mse
  import jax.numpy as jnp

  w1, b1, w2, b2 = params
  return jnp.mean((jnp.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)


def _like(model, dtype=np.float32):
  return [np.zeros(v.shape, dtype) for v in model.trainable_variables]


def _gaps(source, model, x, y, **kwargs):
  params, tx, state = resume_from_keras(source, _like(model), **kwargs)
  theirs = km.peer_continues(model, x, y)
  ours, _ = ref.continue_on_loss(tx, params, state, _mlp_loss, x, y, steps=km.STEPS)
  fresh, _ = ref.continue_on_loss(tx, params, tx.init(params), _mlp_loss, x, y, steps=km.STEPS)
  return km.gap(ours, theirs), km.gap(fresh, theirs)


def _keras3_mlp(keras, seed, dtype=None):
  keras.utils.set_random_seed(seed)
  kw = {} if dtype is None else {"dtype": dtype}
  return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh", **kw),
                           keras.layers.Dense(2, **kw)])


# ---- point 6: exclude_from_weight_decay is not saved ----------------------------------------

@pytest.mark.slow
def test_weight_decay_exclusions_must_be_stated_and_the_statement_resumes(tmp_path):
  import keras

  model = _keras3_mlp(keras, 60)
  opt = keras.optimizers.Nadam(0.01, weight_decay=0.05)
  opt.exclude_from_weight_decay(var_names=["bias"])
  x, y = _data(60)
  path = tmp_path / "wd.keras"
  km.fit_and_save(model, path, x, y, optimizer=opt)
  with pytest.raises(ValueError, match=r"wd.keras: .*weight_decay 0.05.*exclude_from_weight_"
                     r"decay is not saved.*config=\{'exclude_from_weight_decay': \[\]\}.*"
                     r"'0', '1', '2', '3'"):
    resume_from_keras(path, _like(model))
  # The fix, as the message gives it: regexes over the params leaf names (the biases).
  resumed, fresh = _gaps(path, model, x, y, config={"exclude_from_weight_decay": ["^1$", "^3$"]})
  print(f"\nweight decay with excluded biases, stated: gap {resumed:.2e} (fresh {fresh:.2e})")
  assert resumed <= TOL < 30 * TOL < fresh
  # Stating "nothing excluded" for this run decays the biases too: the run is missed.
  wrong, _ = _gaps(path, _peer_again(keras, path, opt, x, y), x, y,
                   config={"exclude_from_weight_decay": []})
  assert wrong > 30 * TOL


def _peer_again(keras, path, opt, x, y):
  """The peer restored from `path` by Keras itself (its exclusions set again, as in code)."""
  model = _keras3_mlp(keras, 60)
  again = keras.optimizers.Nadam(0.01, weight_decay=0.05)
  again.exclude_from_weight_decay(var_names=["bias"])
  model.compile(again, "mse")
  again.build(model.trainable_variables)
  model.load_weights(path)
  return model


@pytest.mark.slow
def test_live_model_exclusions_are_read():
  import keras

  model = _keras3_mlp(keras, 61)
  opt = keras.optimizers.Nadam(0.01, weight_decay=0.05)
  opt.exclude_from_weight_decay(var_names=["bias"])
  x, y = _data(61)
  model.compile(opt, "mse")
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  resumed, fresh = _gaps(model, model, x, y)
  assert resumed <= TOL < 30 * TOL < fresh


@pytest.mark.slow
def test_file_without_weight_decay_needs_no_statement(tmp_path):
  import keras

  model = _keras3_mlp(keras, 62)
  x, y = _data(62)
  km.fit_and_save(model, tmp_path / "nowd.keras", x, y)
  resume_from_keras(tmp_path / "nowd.keras", _like(model))


# ---- point 11: bfloat16 ---------------------------------------------------------------------

BF16_TOL = 2.0 ** -6  # a few bfloat16 ulps (2**-8 relative): Keras steps in bfloat16 arithmetic


@pytest.mark.slow
@pytest.mark.parametrize("source", ["file", "live"])
def test_bfloat16_keras3_model_resumes(tmp_path, source):
  import jax.numpy as jnp
  import keras

  model = _keras3_mlp(keras, 110, dtype="bfloat16")
  x, y = _data(110)
  path = tmp_path / "bf16.keras"
  # beta_2 = 0.999 rounds to 1.0 in bfloat16 (Keras then divides 0 by 0): 0.99 trains.
  km.fit_and_save(model, path, x, y, optimizer=keras.optimizers.Nadam(0.01, beta_2=0.99))
  like = _like(model, jnp.bfloat16)
  saved = params_from_keras(path if source == "file" else model, like)
  for p, v in zip(saved, model.trainable_variables, strict=True):
    assert p.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(p, np.float32), np.asarray(v.numpy(), np.float32))
  params, tx, state = resume_from_keras(path if source == "file" else model, like)
  theirs = [np.asarray(t, np.float32) for t in km.peer_continues(model, x, y)]
  ours, _ = ref.continue_on_loss(tx, params, state, _mlp_loss, x, y, steps=km.STEPS)
  fresh, _ = ref.continue_on_loss(tx, params, tx.init(params), _mlp_loss, x, y, steps=km.STEPS)
  gap = km.gap([np.asarray(o, np.float32) for o in ours], theirs)
  control = km.gap([np.asarray(o, np.float32) for o in fresh], theirs)
  print(f"\nbfloat16 Keras 3 {source}: gap {gap:.2e}, fresh state {control:.2e}")
  assert gap <= BF16_TOL < 3 * BF16_TOL < control


# ---- point 12: tf_keras.optimizers.Nadam (not the legacy class) -----------------------------

def _tf_keras_nadam_run(tmp_path, eager=False):
  import tensorflow as tf
  import tf_keras

  tf_keras.utils.set_random_seed(120)
  model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4, activation="tanh"),
                               tf_keras.layers.Dense(2)])
  opt = tf_keras.optimizers.Nadam(0.01)
  model.compile(opt, "mse", run_eagerly=eager)
  x, y = _data(120)
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  model.save(tmp_path / "tfk.h5")
  tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "tfk_ckpt" / "ckpt"))
  return model, x, y


@pytest.mark.slow
def test_tf_keras_nadam_files_are_refused_truthfully_weights_read(tmp_path):
  model, _, _ = _tf_keras_nadam_run(tmp_path)
  for name, detail in (("tfk.h5", r"does not save its u-product"),
                       ("tfk_ckpt", r"u-product is [0-9.e-]+ where .* schedule gives")):
    with pytest.raises(ValueError, match=rf"{name}.* tf_keras.optimizers.Nadam \(not the "
                       rf"legacy class\).*{detail}.*params_from_keras") as e:
      resume_from_keras(tmp_path / name, _like(model), config={"epsilon": 1e-7})
    assert "no optimizer state" not in str(e.value) and "Custom>" not in str(e.value)
    for p, v in zip(params_from_keras(tmp_path / name, _like(model)), model.trainable_variables,
                    strict=True):
      np.testing.assert_array_equal(p, v.numpy())


@pytest.mark.slow
def test_live_tf_keras_nadam_resumes_only_when_its_u_product_is_nadams(tmp_path):
  # Traced (model.fit's default), the class multiplies its u-product once per variable
  # per step; eager, it is Nadam's, and the live optimizer continues.
  model, _, _ = _tf_keras_nadam_run(tmp_path)
  with pytest.raises(ValueError, match=r"u-product is .* schedule gives"):
    resume_from_keras(model, _like(model))
  model, x, y = _tf_keras_nadam_run(tmp_path, eager=True)
  resumed, fresh = _gaps(model, model, x, y)
  assert resumed <= TOL < 30 * TOL < fresh


# ---- point 13: a tf-keras SavedModel stores its optimizer's config -----------------------

@pytest.mark.slow
def test_tf_keras_saved_model_resumes_without_config(tmp_path):
  import tensorflow as tf
  import tf_keras

  tf_keras.utils.set_random_seed(130)
  model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4, activation="tanh"),
                               tf_keras.layers.Dense(2)])
  opt = tf_keras.optimizers.legacy.Nadam(0.01, epsilon=1e-6, clipnorm=0.5)
  model.compile(opt, "mse")
  x, y = _data(130)
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  model.save(tmp_path / "sm")  # a SavedModel directory (keras_metadata.pb holds the config)
  tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt" / "ckpt"))
  _, tx, _ = resume_from_keras(tmp_path / "sm", _like(model))
  assert isinstance(tx, okeras.Nadam)
  assert (tx.get_config()["epsilon"], tx.get_config()["clipnorm"]) == (1e-6, 0.5)
  # A bare checkpoint has no config: the message asks for it, and names no SavedModel fix
  # for a file that is one.
  with pytest.raises(ValueError, match=r"ckpt is a TF checkpoint.*config="):
    resume_from_keras(tmp_path / "ckpt", _like(model))
  resumed, fresh = _gaps(tmp_path / "sm", model, x, y)
  assert resumed <= TOL < 30 * TOL < fresh
