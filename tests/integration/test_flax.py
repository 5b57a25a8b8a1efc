"""nadam in Flax loops: NNX (`nnx.Optimizer` + `nnx.jit`) and Linen (`TrainState` + `jax.jit`).

A 64-64-10 MLP on scikit-learn's `load_digits` (ships with scikit-learn: no
download), standardised with the training split's statistics, fixed stratified
75/25 split, mini-batches of 128 in a fixed order. Each front must reach >= 95%
test accuracy, and both must trace exactly the loss curve of a plain-optax loop
(`jax.value_and_grad` + `tx.update` + `optax.apply_updates`) from the same init.
"""

import functools

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from optax_nadam import ScaleByNadamState, nadam, nadamw
from optax_nadam._demo.train import batch_indices

HIDDEN = 64
BATCH = 128
LEARNING_RATE = 3e-3
STEPS = 300
MIN_ACCURACY = 0.95


@functools.lru_cache(maxsize=None)
def _digits():
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x.astype(np.float32), y.astype(np.int32), test_size=0.25, random_state=0, stratify=y)
  mean, std = x_tr.mean(0), x_tr.std(0)
  std = np.where(std > 0, std, 1.0)  # some border pixels are 0 in every training image
  return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def _batches(steps):
  x_tr, y_tr, _, _ = _digits()
  idx = batch_indices(len(x_tr), steps, BATCH, seed=0)
  return jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _initial_params(seed=0):
  """Linen-layout params ({'hidden': {'kernel', 'bias'}, 'out': ...}) copied into every front."""
  params = _LinenMLP().init(jax.random.key(seed), jnp.zeros((1, 64)))["params"]
  # Nonzero biases so that a mix-up of kernel and bias, or of layers, cannot go unnoticed.
  return jax.tree.map(lambda a: a + 0.01 * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)
                      / a.size if a.ndim == 1 else a, params)


class _LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = linen.relu(linen.Dense(HIDDEN, name="hidden")(x))
    return linen.Dense(10, name="out")(x)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _nnx_model(params):
  model = _NnxMLP(nnx.Rngs(0))
  for layer in ("hidden", "out"):
    getattr(model, layer).kernel[...] = jnp.asarray(params[layer]["kernel"])
    getattr(model, layer).bias[...] = jnp.asarray(params[layer]["bias"])
  return model


def _nnx_params(model):
  return {layer: {"kernel": getattr(model, layer).kernel[...],
                  "bias": getattr(model, layer).bias[...]} for layer in ("hidden", "out")}


def _nnx_opt_state(optimizer):
  """The optax state inside an `nnx.Optimizer` as plain arrays and dicts (no nnx wrappers)."""
  arrays = jax.tree.map(lambda v: v[...], optimizer.opt_state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  return jax.tree.map(lambda s: nnx.to_pure_dict(s) if isinstance(s, nnx.State) else s, arrays,
                      is_leaf=lambda s: isinstance(s, nnx.State))


def train_nnx(tx, steps, params=None):
  """`nnx.Optimizer(model, tx, wrt=nnx.Param)` updated in an `nnx.jit` step.

  Returns:
    ``(losses, test_accuracy, params, optimizer, traces)``.
  """
  model = _nnx_model(_initial_params() if params is None else params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x, y):
    traces.append(None)
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(x), y))(model)
    optimizer.update(model, grads)
    return loss

  xb, yb = _batches(steps)
  losses = np.asarray([step(model, optimizer, xb[i], yb[i]) for i in range(steps)])
  _, _, x_te, y_te = _digits()
  accuracy = float(jnp.mean(jnp.argmax(model(jnp.asarray(x_te)), -1) == y_te))
  return losses, accuracy, _nnx_params(model), optimizer, len(traces)


def train_linen(tx, steps, params=None):
  """`TrainState.create(apply_fn, params, tx)` updated by `apply_gradients` in a `jax.jit` step.

  Returns:
    ``(losses, test_accuracy, params, state, traces)``.
  """
  model = _LinenMLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=_initial_params() if params is None else params, tx=tx)
  traces = []

  @jax.jit
  def step(state, x, y):
    traces.append(None)

    def loss_fn(params):
      return _xent(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  xb, yb = _batches(steps)
  losses = []
  for i in range(steps):
    state, loss = step(state, xb[i], yb[i])
    losses.append(loss)
  _, _, x_te, y_te = _digits()
  logits = model.apply({"params": state.params}, jnp.asarray(x_te))
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_te))
  return np.asarray(losses), accuracy, state.params, state, len(traces)


def train_plain(tx, steps, params):
  """The reference: a plain-optax loop over a params dict, no Flax in the update path."""

  def forward(params, x):
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: _xent(forward(p, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  xb, yb = _batches(steps)
  losses = []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, xb[i], yb[i])
    losses.append(loss)
  return np.asarray(losses), params, opt_state


TXS = {
    "nadam": lambda: nadam(LEARNING_RATE),
    "clip+nadam": lambda: optax.chain(optax.clip_by_global_norm(1.0), nadam(LEARNING_RATE)),
    "nadamw": lambda: nadamw(LEARNING_RATE, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", list(TXS))
def test_nnx_optimizer_trains_digits(name):
  losses, accuracy, _, optimizer, traces = train_nnx(TXS[name](), STEPS)
  print(f"NNX nadam ({name}): test accuracy {100 * accuracy:.2f}% after {STEPS} steps, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.4f}")
  assert accuracy >= MIN_ACCURACY
  assert losses[-1] < 0.1 * losses[0]
  assert traces == 1  # one compilation for the whole run
  nadam_states = [s for s in jax.tree.leaves(
      _nnx_opt_state(optimizer), is_leaf=lambda s: isinstance(s, ScaleByNadamState))
      if isinstance(s, ScaleByNadamState)]
  assert len(nadam_states) == 1
  assert int(nadam_states[0].count) == STEPS


def test_linen_train_state_trains_digits():
  losses, accuracy, _, state, traces = train_linen(nadam(LEARNING_RATE), STEPS)
  print(f"Linen nadam: test accuracy {100 * accuracy:.2f}% after {STEPS} steps, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.4f}")
  assert accuracy >= MIN_ACCURACY
  assert losses[-1] < 0.1 * losses[0]
  assert traces == 1
  assert int(state.step) == STEPS
  assert int(state.opt_state[0].count) == STEPS


@pytest.mark.parametrize("name", ["nadam", "clip+nadam"])
def test_nnx_and_linen_follow_the_plain_optax_loss_curve(name):
  steps = 60
  params = _initial_params()
  ref_losses, ref_params, ref_state = train_plain(TXS[name](), steps, params)
  nnx_losses, _, nnx_params, optimizer, _ = train_nnx(TXS[name](), steps, params)
  linen_losses, _, linen_params, linen_state, _ = train_linen(TXS[name](), steps, params)
  gap = lambda a: float(np.max(np.abs(a - ref_losses) / np.abs(ref_losses)))  # noqa: E731
  print(f"{name}: loss-curve max rel gap to plain optax over {steps} steps: "
        f"NNX {gap(nnx_losses):.2e}, Linen {gap(linen_losses):.2e}")
  # Same init, same batches, same math: the curves agree to float32 rounding.
  np.testing.assert_allclose(nnx_losses, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(linen_losses, ref_losses, rtol=1e-5)
  chex.assert_trees_all_close(nnx_params, ref_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(linen_params, ref_params, rtol=1e-5, atol=1e-6)
  # The optimizer state the fronts hold is the plain loop's, leaf for leaf.
  chex.assert_trees_all_close(linen_state.opt_state, ref_state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(_nnx_opt_state(optimizer), ref_state, rtol=1e-5, atol=1e-6)
  # The curve moved, and the tolerance tells optimizers apart: optax.nadam (another
  # algorithm) from the same init is far outside it.
  assert ref_losses[-1] < 0.5 * ref_losses[0]
  other_losses, _, _ = train_plain(optax.nadam(LEARNING_RATE), steps, params)
  print(f"  optax.nadam's curve, for scale: max rel gap {gap(other_losses):.2e}")
  assert gap(other_losses) > 1e-3
