"""State helpers of `optax_nadam.keras.Nadam`'s Keras methods (private).

Finding the Nadam node, the tf-keras legacy ``get_weights`` layout both ways,
slots, and ``apply_gradients``' pairs as trees.
"""

import warnings
from typing import Any, List, Sequence, Tuple, Union

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


def slot(state: Any, var: Union[int, str], slot_name: str) -> jax.Array:
  """`Nadam.get_slot`: the ``"m"`` or ``"v"`` leaf of `var` (an index or a path)."""
  if slot_name not in ("m", "v"):
    raise ValueError(f"get_slot: slot_name must be 'm' or 'v', got {slot_name!r}.")
  nadam = find_nadam_state(state)
  tree = nadam.m if slot_name == "m" else nadam.v
  leaves = jax.tree.leaves(tree)
  if isinstance(var, (int, np.integer)) and not isinstance(var, bool):
    if not -len(leaves) <= int(var) < len(leaves):
      raise ValueError(f"get_slot: index {var} out of range for {len(leaves)} parameters.")
    return leaves[int(var)]
  if isinstance(var, str):
    names = _tree.leaf_names(tree)
    for leaf, name, keystr in zip(leaves, names, _tree.leaf_paths(tree)):
      if var in (name, keystr):
        return leaf
    raise ValueError(f"get_slot: no parameter at path {var!r}; paths: {names}.")
  raise TypeError(f"get_slot: var must be an int index or a path string, got {var!r}.")


def variables(state: Any) -> List[jax.Array]:
  """`Nadam.variables`: `weights_from_state`'s order, then accumulators, then the EMA."""
  nadam = find_nadam_state(state)
  out = [nadam.count, nadam.mu_product, *jax.tree.leaves(nadam.m), *jax.tree.leaves(nadam.v)]
  for _, node in _tree.find_nodes(state.core, optax.MultiStepsState):
    out += jax.tree.leaves(node.acc_grads)
  return out + jax.tree.leaves(state.ema)


def split_pairs(grads_and_vars: Any) -> Tuple[Any, Any, Any]:
  """`Nadam.apply_gradients`' pairs as ``(grads, params, present)`` trees.

  A list of pairs gives lists, a ``{name: (grad, var)}`` dict gives dicts; a
  None gradient becomes zeros with ``present`` False (all-True: ``None``).

  Raises:
    TypeError: malformed pairs.
    ValueError: every gradient is None, or a gradient's shape is not its variable's.
  """
  if isinstance(grads_and_vars, dict):
    keys, pairs = list(grads_and_vars), list(grads_and_vars.values())
    labels = [str(k) for k in keys]
  else:
    try:
      pairs = list(grads_and_vars)
    except TypeError:
      raise TypeError("apply_gradients: grads_and_vars must be an iterable of (gradient, "
                      f"variable) pairs, got {type(grads_and_vars).__name__}.") from None
    keys, labels = None, [str(i) for i in range(len(pairs))]
  for label, pair in zip(labels, pairs):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise TypeError(f"apply_gradients: grads_and_vars[{label}] must be a (gradient, "
                      f"variable) pair, got {type(pair).__name__}.")
    if not hasattr(pair[1], "shape") or (pair[0] is not None and not hasattr(pair[0], "shape")):
      raise TypeError(f"apply_gradients: grads_and_vars[{label}] must hold arrays, got "
                      f"({type(pair[0]).__name__}, {type(pair[1]).__name__}).")
  present = [g is not None for g, _ in pairs]
  if not any(present):
    raise ValueError("No gradients provided for any variable.")
  for label, (g, v) in zip(labels, pairs):
    if g is not None and jnp.shape(g) != jnp.shape(v):
      raise ValueError(f"apply_gradients: the gradient at grads_and_vars[{label}] has shape "
                       f"{jnp.shape(g)} but its variable has shape {jnp.shape(v)}.")
  if not all(present):
    missing = [label for label, p in zip(labels, present) if not p]
    warnings.warn(f"Gradients do not exist for variables {missing}; they are left as they are.",
                  stacklevel=3)
  grads = [jnp.zeros_like(v) if g is None else g for g, v in pairs]
  params = [v for _, v in pairs]
  if keys is not None:
    grads, params, present = (dict(zip(keys, x)) for x in (grads, params, present))
  # A params-shaped tree of flags (traced: every pattern shares one compilation).
  return grads, params, None if all(jax.tree.leaves(present)) else present
