"""Checks for optimizer state that comes from outside the program.

A checkpoint restored into the wrong run fails quietly: arrays of another tree
pair with this one's leaves by position when the counts agree. These functions
refuse such a state before the first step, naming the leaf:

- `check_state(state, like)`: same tree, shapes, dtypes as ``like`` (e.g.
  ``jax.eval_shape(tx.init, params)``), finite values, and per
  `ScaleByNadamState` a count >= 0 and a mu-product in [0, 1].
- `to_arrays(tree)` / `from_arrays(arrays, like)`: any optax state as a flat
  ``{path: numpy array}`` for ``numpy.savez`` and back, matched by path.

Non-finite gradients are `optax.apply_if_finite`'s job, not this module's.
"""

from typing import Any, Dict, Mapping

import jax
import numpy as np

from optax_nadam import _tree
from optax_nadam._tree import path_str as _path_str
from optax_nadam.transform import ScaleByNadamState


def _check_structure(state: Any, like: Any, what: str) -> None:
  s_def, l_def = jax.tree.structure(state), jax.tree.structure(like)
  if s_def == l_def:
    return
  detail = _tree.path_difference(state, like, what, "reference")
  if not detail:
    detail = f" Same leaf paths, different node types: {s_def} vs {l_def}."
  raise ValueError(
      f"The {what} does not have the reference's tree structure.{detail} Was it "
      "saved from a different model or optimizer chain?"
  )


def check_state(state: Any, like: Any, *, finite: bool = True) -> Any:
  """Raises unless `state` has the tree, shapes and dtypes of `like`.

  Use it on a state restored from a checkpoint, before the first update. Leaf
  values are checked only when concrete (not under `jit`).

  Args:
    state: the state to check (leaves: numpy or jax arrays).
    like: a reference state with the same structure, e.g. ``tx.init(params)``
      or ``jax.eval_shape(tx.init, params)`` (no memory used).
    finite: also require every floating/complex leaf of `state` to be finite.

  Returns:
    `state`, unchanged, so the call can wrap a restore.

  Raises:
    ValueError: the tree structure, a leaf's shape or dtype differs (the
      message names the leaf path and both values), a leaf holds NaN/Inf
      (with ``finite=True``), or a `ScaleByNadamState` has a negative count
      or a mu-product outside [0, 1].
  """
  _check_structure(state, like, "state")
  s_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  l_leaves = jax.tree.leaves(like)
  for (path, x), ref in zip(s_leaves, l_leaves):
    where = _path_str(path)
    if np.shape(x) != np.shape(ref):
      raise ValueError(
          f"The state leaf at {where} has shape {np.shape(x)}; the reference has "
          f"{np.shape(ref)}."
      )
    x_dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    ref_dtype = np.dtype(ref.dtype)
    if x_dtype != ref_dtype:
      hint = (" The mu-product has the params' widest float precision (float64 for "
              "float64 params under jax_enable_x64); from_arrays widens a saved float32 "
              "one." if where.endswith(".mu_product") else "")
      raise ValueError(
          f"The state leaf at {where} has dtype {x_dtype}; the reference has {ref_dtype}."
          + hint
      )
    if finite and np.issubdtype(x_dtype, np.inexact) and not isinstance(x, jax.core.Tracer):
      if not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"The state leaf at {where} holds NaN or Inf.")

  for path, node in _tree.find_nodes(state, ScaleByNadamState):
    if isinstance(node.count, jax.core.Tracer):
      continue
    where = _path_str(path)
    if int(node.count) < 0:
      raise ValueError(f"{where}.count is {int(node.count)}; a step count is >= 0.")
    _tree.check_mu_product(float(node.mu_product), f"{where}.mu_product")
  return state


def to_arrays(tree: Any) -> Dict[str, np.ndarray]:
  """Flattens a state (or any pytree of arrays) to ``{leaf path: numpy array}``.

  The keys are `jax.tree_util.keystr` paths such as ``"[0].m['dense']['kernel']"``;
  the dict can be written with ``numpy.savez(file, **arrays)``.

  Args:
    tree: a pytree of arrays (e.g. an optax state).

  Returns:
    A dict from leaf path to a numpy copy of the leaf.
  """
  return {_path_str(p): np.array(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def from_arrays(arrays: Mapping[str, Any], like: Any, *, finite: bool = True) -> Any:
  """Rebuilds a state from `to_arrays` output, matching leaves by path.

  Arrays that `numpy.savez` stored as raw bytes (bfloat16 and other ml_dtypes
  come back as ``V2``-style void arrays) are viewed back as the reference's
  dtype when the item size agrees. A float32 ``mu_product`` whose reference is
  float64 (a float64 run saved before the mu-product followed the params'
  precision) is widened, which is exact. The result goes through `check_state`.

  Args:
    arrays: ``{leaf path: array}``, e.g. ``numpy.load("state.npz")``.
    like: a reference state (``tx.init(params)`` or its `jax.eval_shape`).
    finite: passed to `check_state`.

  Returns:
    A state with the tree of `like` and the leaves of `arrays` (numpy arrays).

  Raises:
    ValueError: a key is missing or unexpected (named), or `check_state`
      refuses the result.
  """
  ref_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  wanted = [_path_str(p) for p, _ in ref_leaves]
  missing, extra = set(wanted) - set(arrays), set(arrays) - set(wanted)
  if missing or extra:
    detail = ""
    if missing:
      detail += f" Missing: {_tree.listed(missing)}."
    if extra:
      detail += f" Not in the reference: {_tree.listed(extra)}."
    raise ValueError(
        "The saved arrays do not match the reference state's leaves." + detail
        + " Was the checkpoint saved from a different model or optimizer chain?"
    )
  mu_products = {_path_str(p + (jax.tree_util.GetAttrKey("mu_product"),))
                 for p, _ in _tree.find_nodes(like, ScaleByNadamState)}
  leaves = []
  for key, (_, ref) in zip(wanted, ref_leaves):
    x = np.asarray(arrays[key])
    ref_dtype = np.dtype(ref.dtype)
    if x.dtype.kind == "V" and x.dtype.itemsize == ref_dtype.itemsize:
      x = x.view(ref_dtype)
    if key in mu_products and x.dtype == np.float32 and ref_dtype == np.float64:
      x = x.astype(np.float64)
    leaves.append(x)
  return check_state(treedef.unflatten(leaves), like, finite=finite)
