"""Placing a Keras model's weights into a params tree (private to `from_keras`)."""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam import _tree
from optax_nadam.interop.keras._file_state import Layout, laid_out


def place(source: str, names: Sequence[str], arrays: Sequence[np.ndarray], like: Any,
          layout: Optional[Layout]) -> Any:
  """``arrays[i]`` (after `layout`) as ``jax.tree.leaves(like)[i]``, validated.

  Args:
    source: how messages name the origin (a file path, or "source").
    names: per array, where it is in the source (for messages).
    arrays: the weights, in the source's trainable order.
    like: a params tree (arrays or ``jax.ShapeDtypeStruct``).
    layout: optional ``(params_leaf_path, array) -> array``.

  Returns:
    A tree like `like` of jax arrays (placed with `like`'s shardings).

  Raises:
    ValueError: a count, shape, dtype or non-finite value that does not fit,
      naming the variable and the params leaf path.
  """
  leaves, treedef = jax.tree.flatten(like)
  paths = _tree.leaf_paths(like)
  if len(arrays) != len(leaves):
    raise ValueError(
        f"{source} holds {len(arrays)} trainable weights ({list(names[:5])}"
        f"{' ...' if len(names) > 5 else ''}) but like has {len(leaves)} leaves ({paths[:5]}"
        f"{' ...' if len(paths) > 5 else ''}); they are matched one to one in order.")
  out = []
  for name, x, leaf, path in zip(names, arrays, leaves, paths):
    where = f"{source}: Keras variable {name!r} (params leaf {path})"
    x = laid_out(layout, path, x, where)
    if tuple(x.shape) != tuple(leaf.shape):
      raise ValueError(f"{where} has shape {tuple(x.shape)}; the params leaf has "
                       f"{tuple(leaf.shape)}{' (after layout)' if layout else ''}.")
    if np.dtype(x.dtype) != np.dtype(leaf.dtype):
      raise ValueError(f"{where} has dtype {x.dtype}; the params leaf has {leaf.dtype}.")
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{where} holds NaN or Inf.")
    sharding = getattr(leaf, "sharding", None)
    x = np.array(x, copy=True)
    out.append(jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x))
  return jax.tree.unflatten(treedef, out)
