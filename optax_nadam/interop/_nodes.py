"""Where our NAdam state lives inside an optax state, and reading it out (peer-neutral).

A tx may hold several `ScaleByNadamState` nodes (``optax.multi_transform``),
each holding the moments of some params leaves. `owners` says which node
holds which leaf (and refuses a tx a peer's one-slot-per-parameter state
cannot fill); `read_state` copies each leaf's ``(count, mu_product, m, v)``
out as numpy.
"""

from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam import _tree
from optax_nadam._tree import path_str
from optax_nadam.interop._arrays import to_numpy
from optax_nadam.transform import ScaleByNadamState

param_paths = _tree.leaf_paths


def owners(state: Any, params: Any, unheld: Any = ()) -> List[Tuple[Any, List[int]]]:
  """For each nadam node of `state`, the indices of the params leaves it holds.

  Args:
    state: a state of a tx containing `scale_by_nadam`, for `params`.
    params: the params tree.
    unheld: indices of leaves that may be held by no node (frozen: tx leaves
      them unchanged), or True for any leaf.

  Returns:
    ``[(node_path, [leaf index, ...]), ...]`` in tree order.

  Raises:
    ValueError: unless every params leaf is held by exactly one node (one
      `scale_by_nadam`, or several on disjoint parts as with
      ``optax.multi_transform``).
  """
  nodes = _tree.find_nodes(state, ScaleByNadamState)
  if not nodes:
    raise ValueError(
        "tx has no scale_by_nadam in its state (no ScaleByNadamState found in "
        "tx.init(params)). Pass optax_nadam.nadam(...), nadamw(...), keras.Nadam(...) "
        "or an optax chain containing scale_by_nadam."
    )
  index = {p: i for i, p in enumerate(param_paths(params))}
  owner: Dict[int, str] = {}
  result = []
  for node_path, node in nodes:
    held = []
    for leaf_path in param_paths(node.m):
      if leaf_path not in index:
        raise ValueError(
            f"The ScaleByNadamState at {path_str(node_path)} holds a moment at {leaf_path}, "
            "which is not a leaf path of params. Its moments must be shaped like the "
            "params (not e.g. flattened by optax.flatten)."
        )
      i = index[leaf_path]
      if i in owner:
        raise ValueError(
            f"params leaf {leaf_path} is held by two ScaleByNadamStates ({owner[i]} and "
            f"{path_str(node_path)}); a peer optimizer has one set of slots per "
            "parameter, so tx must apply scale_by_nadam to it once."
        )
      owner[i] = path_str(node_path)
      held.append(i)
    result.append((node_path, held))
  missing = [p for p, i in index.items() if i not in owner
             and not (unheld is True or i in unheld)]
  if missing:
    raise ValueError(
        f"params leaves {missing[:5]} are not held by any scale_by_nadam in tx; the "
        "peer's slots for them would be lost."
    )
  return result


def _moment_leaves(state: Any, params: Any, unheld: Any = ()):
  """Yields ``(params leaf index, nadam node, leaf path, m, v)`` for every held params leaf."""
  nodes = dict(_tree.find_nodes(state, ScaleByNadamState))
  index = {p: i for i, p in enumerate(param_paths(params))}
  for node_path, _ in owners(state, params, unheld):
    node = nodes[node_path]
    for leaf_path, m, v in zip(param_paths(node.m), jax.tree.leaves(node.m),
                               jax.tree.leaves(node.v)):
      yield index[leaf_path], node, leaf_path, m, v


def read_state(state: Any, params: Any,
               unheld: Any = ()) -> List[Tuple[int, np.floating, np.ndarray, np.ndarray]]:
  """Per params leaf, ``(count, mu_product, m, v)`` (numpy copies) from `state`.

  Args:
    state: a state of a tx containing scale_by_nadam, for `params`.
    params: the params tree (fixes the leaf order).
    unheld: leaves that may be held by no node (see `owners`).

  Returns:
    One tuple per ``jax.tree.leaves(params)`` entry (None for a leaf no node
    holds).

  Raises:
    ValueError: a params leaf is complex (the peers' complex rule differs).
  """
  out: List[Any] = [None] * len(param_paths(params))
  for i, node, leaf_path, m, v in _moment_leaves(state, params, unheld):
    if jnp.iscomplexobj(m):
      raise ValueError(
          f"params leaf {leaf_path} is complex; the peers' complex rule "
          "differs from this optimizer's, so its state cannot be exported."
      )
    # A numpy scalar of the state's dtype (float64 for float64 params): exports keep every bit.
    out[i] = (int(node.count), np.asarray(node.mu_product)[()], to_numpy(m), to_numpy(v))
  return out
