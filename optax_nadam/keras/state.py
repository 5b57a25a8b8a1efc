"""State helpers of `optax_nadam.keras.Nadam` (private): find, name, import/export."""

from typing import Any, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam.transform import ScaleByNadamState


def _is_node(x: Any) -> bool:
  return isinstance(x, (ScaleByNadamState, optax.MultiStepsState))


def find_nadam_state(state: Any) -> ScaleByNadamState:
  """The one `ScaleByNadamState` inside an optimizer state.

  Args:
    state: any optax state tree.

  Returns:
    The `ScaleByNadamState` node.

  Raises:
    ValueError: there is none, or more than one.
  """
  return _tree.find_one(state, ScaleByNadamState,
                        "pass the state returned by this optimizer's init().")


leaf_names = _tree.leaf_names


def keep_where_absent(new: Any, old: Any, present: Any) -> Any:
  """`new` with its params-shaped parts taking `old`'s leaves where `present` is False.

  A part of the state is params-shaped when it has `present`'s tree structure
  (moments, accumulators, the averages of any stage): found by structure, not
  by the state class, so a stage added to the chain is covered too. With two
  or more params leaves (the only case with an absent gradient and a present
  one) no scalar counter can have that structure.

  Args:
    new: the state after an update.
    old: the state before it (same structure).
    present: a params-shaped tree of booleans (Python or jax), False where the
      gradient was absent.

  Returns:
    The merged state.
  """
  structure = jax.tree.structure(present)

  def params_shaped(x: Any) -> bool:
    return jax.tree.structure(x) == structure

  def merge(n: Any, o: Any) -> Any:
    if not params_shaped(n):
      return n
    return jax.tree.map(lambda p, a, b: jnp.where(p, a, b), present, n, o)

  return jax.tree.map(merge, new, old, is_leaf=params_shaped)


def weights_from_state(state: Any) -> List[np.ndarray]:
  """``[iterations (int64), mu_product, m..., v...]`` as numpy arrays.

  ``mu_product`` keeps the state's dtype: float32 (tf-keras legacy's momentum
  cache), or float64 for float64 params under ``jax_enable_x64``.

  Args:
    state: a state holding one `ScaleByNadamState`.

  Returns:
    tf-keras legacy Nadam's ``get_weights()`` layout.
  """
  nadam = find_nadam_state(state)
  return ([np.asarray(nadam.count, np.int64), np.array(nadam.mu_product)]
          + [np.array(x) for x in jax.tree.leaves(nadam.m)]
          + [np.array(x) for x in jax.tree.leaves(nadam.v)])


def _checked(i: int, w: Any, like: Any, what: str) -> jax.Array:
  w = np.asarray(w)
  like_dtype = np.dtype(like.dtype)
  if w.shape != tuple(like.shape):
    raise ValueError(f"set_weights: weights[{i}] ({what}) has shape {w.shape}, expected "
                     f"{tuple(like.shape)}.")
  kind_ok = (np.issubdtype(w.dtype, np.integer) if np.issubdtype(like_dtype, np.integer)
             else np.issubdtype(w.dtype, np.complexfloating) if np.issubdtype(
                 like_dtype, np.complexfloating) else np.issubdtype(w.dtype, np.floating))
  if not kind_ok:
    raise TypeError(f"set_weights: weights[{i}] ({what}) has dtype {w.dtype}, expected "
                    f"{like_dtype} (or another dtype of the same kind).")
  return jnp.asarray(w.astype(like_dtype))


def weights_into_state(state: Any, weights: Sequence[Any]) -> Any:
  """Loads a tf-keras legacy ``get_weights()`` list into `state`.

  Args:
    state: a state of the optimizer (structure, shapes, dtypes).
    weights: ``[iterations, mu_product, m..., v...]``.

  Returns:
    The new state (real step count = iterations * k, accumulators zeroed).

  Raises:
    ValueError: wrong count, shape, or a negative iteration count.
    TypeError: wrong dtype kind, or `weights` not a sequence.
  """
  if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__len__"):
    raise TypeError(f"set_weights: weights must be a list of arrays, got "
                    f"{type(weights).__name__}.")
  nadam = find_nadam_state(state)
  m_leaves, m_def = jax.tree.flatten(nadam.m)
  v_leaves = jax.tree.leaves(nadam.v)
  n = len(m_leaves)
  if len(weights) != 2 + 2 * n:
    raise ValueError(f"set_weights: expected {2 + 2 * n} weights (iterations, momentum cache, "
                     f"{n} m, {n} v), got {len(weights)}.")
  count = _checked(0, weights[0], nadam.count, "iterations")
  if int(count) < 0:
    raise ValueError(f"set_weights: weights[0] (iterations) must be >= 0, got {int(count)}.")
  mu_product = _checked(1, weights[1], nadam.mu_product, "momentum cache")
  m = [_checked(2 + i, w, like, "m") for i, (w, like) in enumerate(zip(weights[2:2 + n],
                                                                      m_leaves))]
  v = [_checked(2 + n + i, w, like, "v") for i, (w, like) in enumerate(zip(weights[2 + n:],
                                                                          v_leaves))]
  new_nadam = ScaleByNadamState(count, mu_product, jax.tree.unflatten(m_def, m),
                                jax.tree.unflatten(m_def, v))

  def fix(node):
    if isinstance(node, ScaleByNadamState):
      return new_nadam
    if isinstance(node, optax.MultiStepsState):
      return node._replace(
          mini_step=jnp.zeros_like(node.mini_step),
          gradient_step=count.astype(node.gradient_step.dtype),
          acc_grads=jax.tree.map(jnp.zeros_like, node.acc_grads),
          inner_opt_state=jax.tree.map(fix, node.inner_opt_state, is_leaf=_is_node))
    return node

  return jax.tree.map(fix, state, is_leaf=_is_node)
