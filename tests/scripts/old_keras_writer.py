"""Writes ``.keras`` files with an old Keras 3 (3.0-3.9), to check the reader against them.

Not run by the test suite (CI has one Keras); run it by hand with the Python of
a private venv holding the old Keras, then check the files with
``tests/scripts/old_keras_check.py``::

  python -m venv /tmp/venv-k30
  /tmp/venv-k30/bin/pip install keras==3.0.5 "jax[cpu]==0.4.23" jaxlib==0.4.23 \
      "numpy<2" "ml-dtypes<0.5" packaging
  /tmp/venv-k30/bin/python tests/scripts/old_keras_writer.py /tmp/old30
  PYTHONPATH=$PWD python tests/scripts/old_keras_check.py /tmp/old30

Usage: ``old_keras_writer.py OUT_DIR``. In OUT_DIR, for each optimizer setting
in `SETTINGS` (plain, EMA, accumulation, both, a schedule): ``<name>.keras``
(``Dense(4, tanh) -> Dense(2)`` after 5 ``train_on_batch`` calls, mid-cycle
with accumulation 3), ``<name>_after.npz`` (the weights after 20 more calls,
``w0``, ...); and ``data.npz`` (``x``, ``y``). Prints ``RESULT {json}``.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

OUT = sys.argv[1]
rng = np.random.RandomState(0)
X = rng.randn(16, 3).astype(np.float32)
Y = rng.randn(16, 2).astype(np.float32)
SETTINGS = {
    "plain": dict(learning_rate=0.01),
    "ema": dict(learning_rate=0.01, use_ema=True),
    "acc": dict(learning_rate=0.01, gradient_accumulation_steps=3),
    "ema_acc": dict(learning_rate=0.01, use_ema=True, gradient_accumulation_steps=3,
                    weight_decay=0.01),
    "schedule": dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        0.01, decay_steps=10, decay_rate=0.9), clipnorm=1.0),
}


def main():
  os.makedirs(OUT, exist_ok=True)
  np.savez(os.path.join(OUT, "data.npz"), x=X, y=Y)
  for name, kwargs in SETTINGS.items():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.Nadam(**kwargs), "mse", jit_compile=False)
    for _ in range(5):
      model.train_on_batch(X, Y)
    model.save(os.path.join(OUT, f"{name}.keras"))
    for _ in range(20):
      model.train_on_batch(X, Y)
    np.savez(os.path.join(OUT, f"{name}_after.npz"),
             **{f"w{i}": np.asarray(v.numpy() if hasattr(v, "numpy") else v.value)
                for i, v in enumerate(model.trainable_variables)})
  print("RESULT " + json.dumps({"keras": keras.__version__, "files": sorted(os.listdir(OUT))}))


if __name__ == "__main__":
  main()
