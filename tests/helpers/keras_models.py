"""Keras 3 models trained and saved the way Keras writes them, and what the live peer holds.

Shared by the Keras pairing tests: `fit_and_save` trains a compiled model with
``model.fit`` and ``model.save``; `truth` reads the live optimizer's state per
trainable variable (by identity, Keras's own pairing); `keras_loss` is the
model's own forward pass (``stateless_call``, KERAS_BACKEND=jax) as a pure loss
of the trainable variables in ``model.trainable_variables`` order, so that an
optax run continues exactly the peer's problem; `random_model` draws models
whose files are hard to pair (equal shapes, frozen variables, nesting,
attribute names that sort against their order).
"""

import numpy as np

STEPS = 20


def fit_and_save(model, path, x, y, optimizer=None, epochs=2, batch_size=8):
  """Compiles (Nadam(0.01) unless given), fits, saves; returns the live model."""
  import keras

  model.compile(optimizer or keras.optimizers.Nadam(0.01), "mse")
  model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
  model.save(path)
  return model


def truth(model):
  """Per trainable variable (model order): (value, momentum, velocity), numpy copies."""
  opt = model.optimizer
  out = []
  for var in model.trainable_variables:
    i = opt._get_variable_index(var)
    out.append(tuple(np.array(x.numpy(), copy=True) for x in (
        var, opt._momentums[i], opt._velocities[i])))
  return out


def keras_loss(model):
  """``loss(params, x, y)``: mse of the model's forward pass with trainable `params`."""
  import jax.numpy as jnp

  # Copies: the peer's train steps donate (delete) its variables' buffers.
  frozen = [jnp.array(np.array(v.numpy(), copy=True)) for v in model.non_trainable_variables]

  def loss(params, x, y):
    out, _ = model.stateless_call(list(params), frozen, x, training=True)
    return jnp.mean((out - y) ** 2)

  return loss


def peer_continues(model, x, y, steps=STEPS):
  """The live peer's next `steps` ``train_on_batch`` steps; its trainable weights after."""
  for _ in range(steps):
    model.train_on_batch(x, y)
  return [np.array(v.numpy(), copy=True) for v in model.trainable_variables]


def gap(ours, theirs):
  """max |ours - theirs| / max |theirs| over every leaf."""
  scale = max(float(np.max(np.abs(t))) for t in theirs)
  return max(float(np.max(np.abs(np.asarray(o, np.float64) - t)))
             for o, t in zip(ours, theirs, strict=True)) / scale


def two_variable_layer(keras, fixed_shape, train_shape):
  """A custom layer creating ``w_fixed`` then ``w_train`` and freezing ``w_fixed``."""

  class TwoVariables(keras.layers.Layer):
    def build(self, input_shape):
      self.w_fixed = self.add_weight(shape=fixed_shape, initializer="ones", name="w_fixed")
      self.w_train = self.add_weight(shape=train_shape, initializer="zeros", name="w_train")
      self.w_fixed.trainable = False  # a variable-level flag: not in config.json

    def call(self, x):
      return x * self.w_fixed + self.w_train

  return TwoVariables


def block_class(keras, names):
  """A keras-hub style layer: sublayers assigned under `names` (a custom class).

  Two LayerNormalization (equal shapes) and a Dense, in the order of `names`,
  so that the attributes' alphabetical order differs from the creation order.
  """

  class Block(keras.layers.Layer):
    def __init__(self, width=4, **kwargs):
      super().__init__(**kwargs)
      self.width = width
      for n in names[:2]:
        setattr(self, n, keras.layers.LayerNormalization())
      setattr(self, names[2], keras.layers.Dense(width))

    def call(self, x):
      for n in names:
        x = getattr(self, n)(x)
      return x

    def get_config(self):
      return {**super().get_config(), "width": self.width}

  return Block


# ---- random models for the property test -------------------------------------------------

WIDTH = 2  # one width: shapes collide everywhere, only the proof can pair


def random_model(keras, draw):
  """A compiled-to-be Keras model drawn with hypothesis's `draw` (st.data().draw).

  Returns ``(model, x, y)``. Layers: Dense (random names), custom layers with
  several equal-shape variables some of which are frozen per variable, a
  keras-hub style Block, MultiHeadAttention, nested Sequential blocks; the top
  is Sequential, Functional or a subclassed Model with random attribute names.
  """
  from hypothesis import strategies as st

  layers = keras.layers
  name = st.text("abcxyz", min_size=1, max_size=5)
  made = []  # layer names must be unique in a model: a random stem and a serial number

  def custom():
    n = draw(st.integers(1, 3))
    frozen = draw(st.lists(st.booleans(), min_size=n, max_size=n))

    class Custom(keras.layers.Layer):
      def build(self, input_shape):
        self.ws = [self.add_weight(shape=(WIDTH,), initializer="random_normal")
                   for _ in range(n)]
        for w, f in zip(self.ws, frozen):
          w.trainable = not f

      def call(self, x):
        for w in self.ws:
          x = x * (1.0 + 0.1 * w) + 0.1 * w
        return x

    return Custom()

  def one(depth):
    kind = draw(st.sampled_from(["dense", "dense", "custom", "block", "mha", "nested"]
                                if depth < 2 else ["dense", "custom"]))
    if kind == "dense":
      made.append(draw(name))
      return layers.Dense(WIDTH, activation="tanh", name=f"{made[-1]}_{len(made)}")
    if kind == "custom":
      return custom()
    if kind == "block":
      names = draw(st.permutations(["alpha", "mid", "zeta"]))
      return block_class(keras, list(names))(WIDTH)
    if kind == "mha":
      return _SelfAttention(keras)
    inner = [one(depth + 1) for _ in range(draw(st.integers(1, 2)))]
    return keras.Sequential(inner)

  body = [one(0) for _ in range(draw(st.integers(0, 3)))] + [layers.Dense(WIDTH)]
  top = draw(st.sampled_from(["sequential", "functional", "subclassed"]))
  if top == "sequential":
    model = keras.Sequential([keras.Input((3, WIDTH)), *body])
  elif top == "functional":
    inputs = keras.Input((3, WIDTH))
    h = inputs
    for layer in body:
      h = layer(h)
    model = keras.Model(inputs, h)
  else:
    attrs = draw(st.lists(name, min_size=len(body), max_size=len(body), unique=True))

    class Sub(keras.Model):
      def __init__(self):
        super().__init__()
        self.order = [f"a_{a}" for a in attrs]
        for a, layer in zip(self.order, body):
          setattr(self, a, layer)

      def call(self, x):
        for a in self.order:
          x = getattr(self, a)(x)
        return x

    model = Sub()
  rng = np.random.RandomState(draw(st.integers(0, 99)))
  x = rng.randn(8, 3, WIDTH).astype(np.float32)
  y = rng.randn(8, 3, WIDTH).astype(np.float32)
  return model, x, y


def _SelfAttention(keras):  # noqa: N802 (a layer factory)
  """MultiHeadAttention(x, x) as one layer of a Sequential (its sublayers: q, k, v, o)."""

  class SelfAttention(keras.layers.Layer):
    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.attention = keras.layers.MultiHeadAttention(num_heads=1, key_dim=WIDTH)

    def call(self, x):
      return self.attention(x, x)

  return SelfAttention()
