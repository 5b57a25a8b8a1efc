"""Writes the Keras / TF files `tests/interop/test_keras_files.py` reads, with the real peers.

Usage: ``_keras_files_writer.py OUT_DIR``

Runs in its own process so that the custom layer class below (defined in this
``__main__``) is not importable by the reader. In OUT_DIR it writes:

- ``k3.keras``: Keras 3 (jax backend) Sequential ``Dense(4, tanh) -> ScaleShift
  (custom) -> Dense(2)``, ``keras.optimizers.Nadam(0.01)``, ``model.fit`` 2 epochs
  of 2 batches, ``model.save``; then 20 ``train_on_batch`` steps on the full
  batch, weights written to ``k3_after.npz`` (``w0``, ``w1``, ...);
  ``k3_saved.npz`` holds the trainable weights at save time.
- ``k3_bn.keras``: Keras 3 ``Dense(4) -> BatchNormalization -> Dense(2)`` after
  one fit step (weights at save time in ``k3_bn_saved.npz``).
- ``k3_ema.keras``: ``Dense(4, tanh) -> Dense(2)`` with Nadam(ExponentialDecay
  schedule, weight_decay=0.01, use_ema=True, gradient_accumulation_steps=3),
  saved one call into an accumulation cycle; ``k3_ema_after.npz`` and
  ``k3_ema_average.npz`` hold the weights and EMA averages 20 steps later.
- ``k3_unbuilt.keras``: compiled with Nadam(0.01), saved before any step.
- ``k3_adam.keras``: the first model's architecture trained with Keras 3 Adam.
- ``legacy.h5`` and ``legacy_ckpt/ckpt-1``: tf-keras ``Dense(4, tanh) -> Dense(2)``
  with ``tf_keras.optimizers.legacy.Nadam(0.01)`` after ``fit``, saved with
  ``model.save`` and ``tf.train.Checkpoint(model=, optimizer=).save``; then 20
  ``train_on_batch`` steps, weights in ``legacy_after.npz``.
- ``legacy_adam.h5`` and ``legacy_adam_ckpt/ckpt-1``: the same with legacy Adam.
- ``k3_acc2.keras``: ``Dense(4, tanh) -> Dense(2)``, Nadam(clipnorm=1.0,
  gradient_accumulation_steps=3) saved 2 calls into a cycle (``k3_acc2_after.npz``).
- ``k3_lso.keras``: ``LossScaleOptimizer(Nadam(0.01))`` on a float32 model
  (``k3_lso_after.npz``); ``k3_mixed.keras``: the same model under the
  ``mixed_float16`` policy (compile wraps the Nadam), weights in ``k3_mixed_saved.npz``.
- ``k3_nested.keras``: a Functional model with a nested Sequential block, every
  kernel (4, 4) (``k3_nested_after.npz``); ``k3_sub.keras``: the same layers in
  a subclassed model whose attribute names sort against their order;
  ``k3_sub_distinct.keras``: such a model whose layers' shapes all differ.
- ``k3_deep.keras``: a Sequential of DEEP ``Dense(2, tanh)`` layers and a
  ``Dense(2)`` (``k3_deep_after.npz``).
- ``legacy_nested.h5`` / ``legacy_nested_ckpt``: tf-keras Sequential with a
  nested Sequential, every kernel (4, 4), legacy Nadam (``legacy_nested_after.npz``;
  ``legacy_nested_saved.npz`` holds ``model.trainable_variables`` at save time);
  ``legacy_sub_ckpt``: a subclassed tf-keras model (``legacy_sub_after.npz``).
- ``legacy_lso.h5`` / ``legacy_lso_ckpt``: tf-keras ``LossScaleOptimizer(legacy
  Nadam)`` on a float32 model (``legacy_lso_after.npz``).
- ``data.npz``: ``x`` (16, 3) and ``y`` (16, 2), float32; ``x4`` (16, 4), ``y4`` (16, 4).

Prints ``RESULT {json}`` with the file names.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

OUT = sys.argv[1]
STEPS_AFTER = 20
DEEP = 430  # DenseNet121 has 429 layers; readers recursed per layer up to ~330
rng = np.random.RandomState(0)
X = rng.randn(16, 3).astype(np.float32)
Y = rng.randn(16, 2).astype(np.float32)
X4 = rng.randn(16, 4).astype(np.float32)
Y4 = rng.randn(16, 4).astype(np.float32)


def path(name):
  return os.path.join(OUT, name)


def save_weights(name, variables):
  np.savez(path(name), **{f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)})


def keras3_files():
  import keras

  class ScaleShift(keras.layers.Layer):  # lives only in this process's __main__
    def build(self, input_shape):
      self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")
      self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
      return x * self.scale + self.shift

  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                            ScaleShift(), keras.layers.Dense(2)])
  model.compile(keras.optimizers.Nadam(learning_rate=0.01), "mse")
  model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  model.save(path("k3.keras"))
  save_weights("k3_saved.npz", model.trainable_variables)
  for _ in range(STEPS_AFTER):
    model.train_on_batch(X, Y)
  save_weights("k3_after.npz", model.trainable_variables)

  bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                         keras.layers.BatchNormalization(), keras.layers.Dense(2)])
  bn.compile(keras.optimizers.Nadam(learning_rate=0.01), "mse")
  bn.fit(X, Y, batch_size=16, epochs=1, verbose=0)
  bn.save(path("k3_bn.keras"))
  save_weights("k3_bn_saved.npz", bn.trainable_variables)

  ema = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                          keras.layers.Dense(2)])
  schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
  ema.compile(keras.optimizers.Nadam(learning_rate=schedule, weight_decay=0.01, use_ema=True,
                                     gradient_accumulation_steps=3), "mse",
              jit_compile=False)  # jitted fit with use_ema fails in Keras 3.15 (donated buffer)
  ema.fit(X, Y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 4 calls: 1 into a cycle
  ema.save(path("k3_ema.keras"))
  for _ in range(STEPS_AFTER):
    ema.train_on_batch(X, Y)
  save_weights("k3_ema_after.npz", ema.trainable_variables)
  save_weights("k3_ema_average.npz", ema.optimizer._model_variables_moving_average)

  unbuilt = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
  unbuilt.compile(keras.optimizers.Nadam(learning_rate=0.01), "mse")
  unbuilt.save(path("k3_unbuilt.keras"))

  adam = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                           keras.layers.Dense(2)])
  adam.compile(keras.optimizers.Adam(learning_rate=0.01), "mse")
  adam.fit(X, Y, batch_size=16, epochs=1, verbose=0)
  adam.save(path("k3_adam.keras"))
  keras3_more(keras)


def continue_and_save(model, name, x=X, y=Y):
  model.save(path(f"{name}.keras"))
  save_weights(f"{name}_saved.npz", model.trainable_variables)
  for _ in range(STEPS_AFTER):
    model.train_on_batch(x, y)
  save_weights(f"{name}_after.npz", model.trainable_variables)


def mlp(keras, depth=1, width=4):
  return [keras.Input((3,))] + [keras.layers.Dense(width, activation="tanh")
                                for _ in range(depth)] + [keras.layers.Dense(2)]


def keras3_more(keras):
  keras.utils.set_random_seed(3)
  acc = keras.Sequential(mlp(keras))
  acc.compile(keras.optimizers.Nadam(0.01, clipnorm=1.0, gradient_accumulation_steps=3), "mse")
  acc.fit(X, Y, batch_size=8, epochs=4, shuffle=False, verbose=0)  # 8 calls: 2 into a cycle
  continue_and_save(acc, "k3_acc2")

  lso = keras.Sequential(mlp(keras))
  lso.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Nadam(0.01)), "mse")
  lso.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  continue_and_save(lso, "k3_lso")

  keras.mixed_precision.set_dtype_policy("mixed_float16")
  mixed = keras.Sequential(mlp(keras))
  mixed.compile(keras.optimizers.Nadam(0.01), "mse")
  mixed.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  mixed.save(path("k3_mixed.keras"))
  save_weights("k3_mixed_saved.npz", mixed.trainable_variables)
  keras.mixed_precision.set_dtype_policy("float32")

  # Every kernel (4, 4), every bias (4,): shapes cannot tell the layers apart.
  inputs = keras.Input((4,))
  block = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh"),
                            keras.layers.Dense(4, activation="tanh")])
  h = keras.layers.Dense(4, activation="tanh")(inputs)
  outputs = keras.layers.Dense(4)(block(h))
  nested = keras.Model(inputs, outputs)
  nested.compile(keras.optimizers.Nadam(0.01), "mse")
  nested.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  continue_and_save(nested, "k3_nested", X4, Y4)

  class Sub(keras.Model):  # attributes sort as zeta < ... reversed against their order
    def __init__(self):
      super().__init__()
      self.zeta = keras.layers.Dense(4, activation="tanh")
      self.yolk = keras.layers.Dense(4, activation="tanh")
      self.alpha = keras.layers.Dense(4)

    def call(self, x):
      return self.alpha(self.yolk(self.zeta(x)))

  sub = Sub()
  sub.compile(keras.optimizers.Nadam(0.01), "mse")
  sub.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  continue_and_save(sub, "k3_sub", X4, Y4)

  class Distinct(keras.Model):  # as Sub, but every layer's shapes differ
    def __init__(self):
      super().__init__()
      self.zeta = keras.layers.Dense(5, activation="tanh")
      self.yolk = keras.layers.Dense(3, activation="tanh")
      self.alpha = keras.layers.Dense(4)

    def call(self, x):
      return self.alpha(self.yolk(self.zeta(x)))

  distinct = Distinct()
  distinct.compile(keras.optimizers.Nadam(0.01), "mse")
  distinct.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  continue_and_save(distinct, "k3_sub_distinct", X4, Y4)

  deep = keras.Sequential(mlp(keras, DEEP, 2))
  deep.compile(keras.optimizers.Nadam(0.01), "mse")
  deep.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
  continue_and_save(deep, "k3_deep")


def tf_keras_model(tf_keras, optimizer):
  tf_keras.utils.set_random_seed(2)
  model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4, activation="tanh"),
                               tf_keras.layers.Dense(2)])
  model.compile(optimizer, "mse")
  model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  return model


def legacy_files():
  import tensorflow as tf
  import tf_keras

  opt = tf_keras.optimizers.legacy.Nadam(learning_rate=0.01)
  model = tf_keras_model(tf_keras, opt)
  model.save(path("legacy.h5"))
  tf.train.Checkpoint(model=model, optimizer=opt).save(path("legacy_ckpt/ckpt"))
  for _ in range(STEPS_AFTER):
    model.train_on_batch(X, Y)
  save_weights("legacy_after.npz", model.trainable_variables)

  adam = tf_keras.optimizers.legacy.Adam(learning_rate=0.01)
  model = tf_keras_model(tf_keras, adam)
  model.save(path("legacy_adam.h5"))
  tf.train.Checkpoint(model=model, optimizer=adam).save(path("legacy_adam_ckpt/ckpt"))
  legacy_more(tf, tf_keras)


def legacy_continue(tf, model, opt, name, x=X4, y=Y4, h5=True):
  if h5:
    model.save(path(f"{name}.h5"))
  tf.train.Checkpoint(model=model, optimizer=opt).save(path(f"{name}_ckpt/ckpt"))
  save_weights(f"{name}_saved.npz", model.trainable_variables)
  for _ in range(STEPS_AFTER):
    model.train_on_batch(x, y)
  save_weights(f"{name}_after.npz", model.trainable_variables)


def legacy_more(tf, tf_keras):
  layers = tf_keras.layers
  tf_keras.utils.set_random_seed(4)
  # Nested: breadth-first (the object graph's slot listing) is not trainable order.
  inner = tf_keras.Sequential([layers.Dense(4, activation="tanh"),
                               layers.Dense(4, activation="tanh")])
  nested = tf_keras.Sequential([tf_keras.Input((4,)), layers.Dense(4, activation="tanh"), inner,
                                layers.Dense(4)])
  opt = tf_keras.optimizers.legacy.Nadam(0.01)
  nested.compile(opt, "mse")
  nested.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  legacy_continue(tf, nested, opt, "legacy_nested")

  class Sub(tf_keras.Model):
    def __init__(self):
      super().__init__()
      self.zeta = layers.Dense(4, activation="tanh")
      self.block = tf_keras.Sequential([layers.Dense(4, activation="tanh")])
      self.alpha = layers.Dense(4)

    def call(self, x):
      return self.alpha(self.block(self.zeta(x)))

  sub = Sub()
  opt = tf_keras.optimizers.legacy.Nadam(0.01)
  sub.compile(opt, "mse")
  sub.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  legacy_continue(tf, sub, opt, "legacy_sub", h5=False)  # .h5 cannot hold subclassed models

  lso = tf_keras.Sequential([tf_keras.Input((4,)), layers.Dense(4, activation="tanh"),
                             layers.Dense(4)])
  opt = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.legacy.Nadam(0.01))
  lso.compile(opt, "mse")
  lso.fit(X4, Y4, batch_size=8, epochs=2, shuffle=False, verbose=0)
  legacy_continue(tf, lso, opt, "legacy_lso")


if __name__ == "__main__":
  np.savez(path("data.npz"), x=X, y=Y, x4=X4, y4=Y4)
  keras3_files()
  legacy_files()
  print("RESULT " + json.dumps(sorted(os.listdir(OUT))))
