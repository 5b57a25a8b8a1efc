"""Tree helpers shared by the core, `safety`, `interop` and the Keras front (private).

One copy each of: naming a leaf by its path, the paths two trees do not
share, finding and replacing the nodes of one state class inside an optax
state, and the range check of a mu-product read from outside the program.
"""

from typing import Any, Callable, List, Tuple, Type

import jax


def path_str(path: Any) -> str:
  """jax's keystr of a tree path (``"['dense']['kernel']"``), ``"<root>"`` for ``()``."""
  return jax.tree_util.keystr(path) or "<root>"


def leaf_paths(tree: Any) -> List[str]:
  """`path_str` of every leaf of `tree`, in `jax.tree.leaves` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


_MAX_LISTED = 5


def listed(paths: Any) -> str:
  """The sorted `paths`, the first five, and how many more (for messages)."""
  paths = sorted(paths)
  more = f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
  return f"{paths[:_MAX_LISTED]}{more}"


def path_difference(a: Any, b: Any, a_name: str, b_name: str) -> str:
  """`` Only in the <a_name>: [...]. Only in the <b_name>: [...].`` for two trees' leaf paths.

  Empty when both trees have the same leaf paths.
  """
  a_paths, b_paths = set(leaf_paths(a)), set(leaf_paths(b))
  out = ""
  if a_paths - b_paths:
    out += f" Only in the {a_name}: {listed(a_paths - b_paths)}."
  if b_paths - a_paths:
    out += f" Only in the {b_name}: {listed(b_paths - a_paths)}."
  return out


def _key_name(key: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_names(tree: Any) -> List[str]:
  """Each leaf's keys joined by "/" (``dense/kernel``, ``0``), Keras-style names.

  Args:
    tree: a pytree.

  Returns:
    One name per leaf, in `jax.tree.leaves` order.
  """
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(_key_name(k) for k in path) or "<root>" for path, _ in paths]


def find_nodes(tree: Any, cls: Type) -> List[Tuple[Any, Any]]:
  """All nodes of class `cls` in `tree` (not nested in one another), with their paths.

  Args:
    tree: any pytree, e.g. an optax state.
    cls: the node class, e.g. `ScaleByNadamState` or `optax.MultiStepsState`.

  Returns:
    ``[(path, node), ...]`` in tree order.
  """
  is_node = lambda x: isinstance(x, cls)  # noqa: E731
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]
  return [(path, node) for path, node in flat if is_node(node)]


def find_one(tree: Any, cls: Type, hint: str) -> Any:
  """The one node of class `cls` in `tree`.

  Args:
    tree: any pytree.
    cls: the node class.
    hint: what to do about it, appended to the error message.

  Returns:
    The node.

  Raises:
    ValueError: there is none, or more than one.
  """
  found = find_nodes(tree, cls)
  if len(found) != 1:
    raise ValueError(f"expected exactly one {cls.__name__} in the optimizer state, found "
                     f"{len(found)}; {hint}")
  return found[0][1]


def map_nodes(tree: Any, cls: Type, fn: Callable[[Any, Any], Any]) -> Any:
  """`tree` with each outermost node of class `cls` replaced by ``fn(path, node)``.

  Args:
    tree: any pytree.
    cls: the node class.
    fn: ``(path, node) -> new node``.

  Returns:
    The new tree (same structure outside the replaced nodes).
  """
  is_node = lambda x: isinstance(x, cls)  # noqa: E731
  return jax.tree_util.tree_map_with_path(
      lambda p, x: fn(p, x) if is_node(x) else x, tree, is_leaf=is_node)


def check_mu_product(value: float, name: str) -> None:
  """Raises ValueError unless `value` could be a product of momentum coefficients.

  Each coefficient lies in [0, 1), so any product lies in [0, 1] (0 after
  float32 underflow, 1 before the first step).

  Args:
    value: the mu-product read from outside the program.
    name: the variable or leaf, e.g. ``"[0].mu_product"``, quoted in the message.

  Raises:
    ValueError: NaN or outside [0, 1].
  """
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} is {value}; a product of momentum coefficients in "
                     "[0, 1) lies in [0, 1].")
