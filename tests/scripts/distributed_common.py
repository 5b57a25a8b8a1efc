"""The small problem shared by the distributed and checkpoint tests and their subprocess scripts.

Imported as ``tests.scripts.distributed_common`` by pytest and as ``_distributed_common``
by the scripts in ``tests/`` (run as files, so ``tests/`` is on their path). It
must not touch devices at import time: the scripts set ``XLA_FLAGS`` first.

Every width is a multiple of 8 so that each parameter (weights on their first
axis, biases on their only axis) can be sharded over 8 devices.
"""

import json
import sys
from typing import Any, Dict

import numpy as np

N_IN, N_HIDDEN, N_OUT = 16, 32, 8
BATCH = 64
LEARNING_RATE = 1e-2
RESULT_PREFIX = "RESULT "


def init_params(seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
  """Numpy float32 params of a two-layer MLP: the same bits in every process."""
  rng = np.random.default_rng(seed)

  def dense(n_in, n_out):
    w = rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
    b = rng.normal(0.0, 0.1, (n_out,)).astype(np.float32)
    return {"w": w, "b": b}

  return {"hidden": dense(N_IN, N_HIDDEN), "out": dense(N_HIDDEN, N_OUT)}


def make_batches(steps: int, seed: int = 1):
  """``steps`` batches of ``BATCH`` examples: float32 inputs, int32 labels of a teacher."""
  rng = np.random.default_rng(seed)
  teacher = rng.normal(size=(N_IN, N_OUT)).astype(np.float32)
  x = rng.normal(size=(steps, BATCH, N_IN)).astype(np.float32)
  y = np.argmax(x @ teacher, axis=-1).astype(np.int32)
  return x, y


def loss_fn(params, x, y):
  """Mean softmax cross-entropy of the MLP on ``(x, y)``."""
  import jax
  import optax

  h = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
  logits = h @ params["out"]["w"] + params["out"]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_tx():
  """The optimizer every distributed test trains with: our nadam, clipped like users do."""
  import optax

  from optax_nadam import nadam

  return optax.chain(optax.clip_by_global_norm(10.0), nadam(LEARNING_RATE))


def reference_run(steps: int, seed: int = 0):
  """Single-device, full-batch, plain-optax training: the run everything is compared with.

  Returns:
    ``(params, opt_state, losses)`` after ``steps`` steps, as jax arrays.
  """
  import jax
  import optax

  tx = make_tx()
  params = jax.tree.map(jax.numpy.asarray, init_params(seed))
  state = tx.init(params)
  x, y = make_batches(steps)

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for i in range(steps):
    params, state, loss = step(params, state, x[i], y[i])
    losses.append(float(loss))
  return params, state, losses


def flat_arrays(tree: Any) -> Dict[str, np.ndarray]:
  """``{keystr(path): numpy array}`` of every leaf (fully addressable arrays only)."""
  import jax

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in leaves}


def max_rel_diff(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
  """Largest ``max|a - b| / max(max|b|, 1e-30)`` over leaves with the same keys."""
  assert sorted(a) == sorted(b), (sorted(a), sorted(b))
  gaps = []
  for key in a:
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    assert x.shape == y.shape, (key, x.shape, y.shape)
    gaps.append(float(np.max(np.abs(x - y), initial=0.0) / max(np.max(np.abs(y), initial=0.0),
                                                                 1e-30)))
  return max(gaps)


def emit(result: Dict[str, Any]) -> None:
  """Prints the script's result as one JSON line the parent test parses."""
  sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
  sys.stdout.flush()
