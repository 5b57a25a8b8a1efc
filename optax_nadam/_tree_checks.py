"""Checks of the trees `scale_by_nadam` is given, naming the leaf (private)."""

import jax
import jax.numpy as jnp

from optax_nadam import _tree
from optax_nadam._tree import path_str as _path_str


def check_updates(updates, moments) -> None:
  """Trace-time check of the gradients against the state's moments.

  Args:
    updates: the gradients.
    moments: the state's ``v`` (a tree like the params, in their dtypes).

  Raises:
    ValueError: another tree structure or leaf shape (naming the paths).
    TypeError: an integer gradient, or real and complex mixed (naming the leaf).
  """
  g_leaves, g_def = jax.tree_util.tree_flatten_with_path(updates)
  m_leaves, m_def = jax.tree_util.tree_flatten_with_path(moments)
  if g_def != m_def:
    detail = _tree.path_difference(updates, moments, "gradients", "optimizer state")
    raise ValueError(
        "scale_by_nadam: the gradient tree does not match the tree the state "
        f"was initialised with.{detail} Gradients: {g_def}; state: {m_def}. "
        "Call init(params) with the params you take gradients of."
    )
  for (path, g), (_, m) in zip(g_leaves, m_leaves):
    dtype = jnp.result_type(g)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has dtype "
          f"{dtype}; gradients must be floating point or complex."
      )
    if jnp.shape(g) != jnp.shape(m):
      raise ValueError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has shape "
          f"{jnp.shape(g)} but its parameter (optimizer state) has shape "
          f"{jnp.shape(m)}."
      )
    if jnp.iscomplexobj(g) != jnp.iscomplexobj(m):
      raise TypeError(
          f"scale_by_nadam: the gradient at {_path_str(path)} has dtype "
          f"{dtype} but its optimizer state has dtype {m.dtype}; real and "
          "complex cannot be mixed."
      )
