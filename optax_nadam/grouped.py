"""`grouped`: run an elementwise optimizer on small leaves packed into one buffer per dtype.

A jitted step pays a fixed cost for every array it takes in and gives back; with
thousands of bias-sized leaves that cost, not arithmetic, sets the step time.
`grouped(tx)` keeps the state of the small leaves of one dtype in one 1-D buffer;
large leaves keep their arrays and sharding. `ungroup_state` / `group_state`
convert to the plain per-leaf layout and back. Measurements: docs/performance.md.
"""

from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_MAX_LEAF_SIZE = 4096


class GroupedLeaves(NamedTuple):
  """A tree with its small leaves packed: what the inner transformation sees.

  Attributes:
    groups: dtype name -> 1-D array holding the small leaves of that dtype,
      raveled and concatenated in tree order.
    leaves: the other leaves, unchanged, in tree order.
  """

  groups: Dict[str, Any]
  leaves: Tuple[Any, ...]


class GroupedState(NamedTuple):
  """State of `grouped`: the inner transformation's state over `GroupedLeaves`."""

  inner: optax.OptState


def _size(x) -> int:
  return int(np.prod(jnp.shape(x), dtype=np.int64))


def _plan(leaves, max_leaf_size: int) -> Dict[str, list]:
  """dtype name -> indices of the leaves packed into that group (2 or more)."""
  groups: Dict[str, list] = {}
  for i, x in enumerate(leaves):
    if _size(x) <= max_leaf_size:
      groups.setdefault(jnp.dtype(jnp.result_type(x)).name, []).append(i)
  return {name: idx for name, idx in groups.items() if len(idx) >= 2}


def _pack(tree, max_leaf_size: int, like=None) -> GroupedLeaves:
  """Packs `tree`'s small leaves; which leaves and the group names come from `like`."""
  leaves = jax.tree.leaves(tree)
  plan = _plan(leaves if like is None else jax.tree.leaves(like), max_leaf_size)
  packed = {i for idx in plan.values() for i in idx}
  groups = {name: jnp.concatenate([jnp.ravel(leaves[i]) for i in idx])
            for name, idx in plan.items()}
  return GroupedLeaves(groups, tuple(x for i, x in enumerate(leaves) if i not in packed))


def _unpack(packed: GroupedLeaves, like, max_leaf_size: int):
  """The tree shaped like `like` whose values come from `packed`."""
  like_leaves, treedef = jax.tree.flatten(like)
  plan = _plan(like_leaves, max_leaf_size)
  if sorted(plan) != sorted(packed.groups):
    raise ValueError(
        f"grouped: the state packs the dtype groups {sorted(packed.groups)} but the tree "
        f"given has {sorted(plan)}; it was grouped from a different tree or max_leaf_size.")
  out = [None] * len(like_leaves)
  for name, idx in plan.items():
    buf = packed.groups[name]
    sizes = [_size(like_leaves[i]) for i in idx]
    if _size(buf) != sum(sizes):
      raise ValueError(
          f"grouped: the {name} group holds {_size(buf)} elements but the tree's small "
          f"{name} leaves have {sum(sizes)}; it was grouped from a different tree.")
    offsets = np.cumsum([0] + sizes)
    for j, i in enumerate(idx):
      out[i] = buf[offsets[j]:offsets[j + 1]].reshape(jnp.shape(like_leaves[i]))
  rest = [i for i, x in enumerate(out) if x is None]
  if len(rest) != len(packed.leaves):
    raise ValueError(
        f"grouped: the state holds {len(packed.leaves)} ungrouped leaves but the tree has "
        f"{len(rest)}; it was grouped from a different tree.")
  for i, x in zip(rest, packed.leaves):
    if jnp.shape(x) != jnp.shape(like_leaves[i]):
      path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(like)[0][i][0])
      raise ValueError(f"grouped: the state's leaf for {path} has shape {jnp.shape(x)}, the "
                       f"tree's has {jnp.shape(like_leaves[i])}.")
    out[i] = x
  return treedef.unflatten(out)


def _is_grouped(x) -> bool:
  return isinstance(x, GroupedLeaves)


def grouped(
    inner: optax.GradientTransformation,
    max_leaf_size: int = DEFAULT_MAX_LEAF_SIZE,
) -> optax.GradientTransformation:
  """Runs an elementwise transformation with small leaves packed per dtype.

  Leaves with at most `max_leaf_size` elements are raveled and concatenated,
  one 1-D buffer per dtype, before `inner` sees them; its updates are sliced
  back to the params' tree. `inner`'s state (e.g. NAdam's `m` and `v`) is kept
  over the packed tree, so a jitted step takes and returns a few buffers
  instead of one array per small leaf. Large leaves pass through unchanged and
  keep their sharding. Results equal `inner` on the plain tree to float32
  rounding, not bit for bit (XLA vectorizes the long buffer differently).

  `inner` must treat every element alike (`nadam`, `nadamw` without a mask,
  `optax.adam`, scaling, schedules): it sees the packed tree, so a per-tensor
  rule (per-tensor norm clipping) or a weight-decay mask would see a group as
  one tensor. Put such steps outside, where they see the real leaves:
  ``optax.chain(optax.clip_by_global_norm(1.0), grouped(nadam(lr)))``, and for
  masked decoupled weight decay ``optax.chain(grouped(scale_by_nadam()),
  optax.add_decayed_weights(wd, mask), optax.scale_by_learning_rate(lr))``,
  which is `nadamw(lr, weight_decay=wd, mask=mask)`.

  Example:
    >>> import jax.numpy as jnp, optax, optax_nadam
    >>> params = [jnp.ones(3), jnp.ones(2), jnp.ones((64, 128))]
    >>> tx = optax_nadam.grouped(optax_nadam.nadam(1e-2))
    >>> state = tx.init(params)
    >>> sorted(state.inner[0].m.groups), len(state.inner[0].m.leaves)
    (['float32'], 1)

  Args:
    inner: the transformation to run, e.g. `optax_nadam.nadam(lr)`.
    max_leaf_size: leaves with at most this many elements are grouped; a
      group needs at least two leaves of one dtype. Keep it small: XLA
      concatenates many large operands slowly.

  Returns:
    An `optax.GradientTransformation` with state `GroupedState(inner_state)`.

  Raises:
    ValueError: `max_leaf_size` is not a positive integer.
  """
  if isinstance(max_leaf_size, bool) or not isinstance(max_leaf_size, (int, np.integer)) or (
      max_leaf_size < 1):
    raise ValueError(f"max_leaf_size must be a positive integer, got {max_leaf_size!r}.")
  max_leaf_size = int(max_leaf_size)

  def init_fn(params):
    return GroupedState(inner.init(_pack(params, max_leaf_size)))

  def update_fn(updates, state, params=None):
    packed_updates = _pack(updates, max_leaf_size)
    nodes = [x for x in jax.tree.leaves(state.inner, is_leaf=_is_grouped) if _is_grouped(x)]
    if nodes and sorted(nodes[0].groups) != sorted(packed_updates.groups):
      raise ValueError(
          f"grouped: the gradients' small leaves form the dtype groups "
          f"{sorted(packed_updates.groups)}, the state was grouped as {sorted(nodes[0].groups)}. "
          "Gradients must have their params' dtypes and tree (cast them before this step).")
    packed_params = None if params is None else _pack(params, max_leaf_size)
    steps, inner_state = inner.update(packed_updates, state.inner, packed_params)
    return _unpack(steps, updates, max_leaf_size), GroupedState(inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def ungroup_state(state: Any, params: Any, max_leaf_size: int = DEFAULT_MAX_LEAF_SIZE) -> Any:
  """The state of `grouped(inner)` in the layout of `inner` on the plain tree.

  Every `GroupedLeaves` node (e.g. NAdam's `m` and `v`) becomes a tree like
  `params`; scalars (`count`, `mu_product`) pass through. The result equals
  ``inner.init(params)``-shaped state, so it reads, checkpoints and exports
  (`optax_nadam.interop`) like a plain run's.

  Args:
    state: a `GroupedState`, or a tree holding one (e.g. a chain's state).
    params: the params (or `jax.ShapeDtypeStruct`s) the state was grouped from.
    max_leaf_size: the value given to `grouped`.

  Returns:
    The same state with the `GroupedState` wrappers removed and every packed
    tree unpacked.

  Raises:
    ValueError: the state was grouped from another tree or `max_leaf_size`.
  """
  def unwrap(x):
    if isinstance(x, GroupedState):
      return jax.tree.map(lambda n: _unpack(n, params, max_leaf_size) if _is_grouped(n) else n,
                          x.inner, is_leaf=_is_grouped)
    return x

  return jax.tree.map(unwrap, state, is_leaf=lambda x: isinstance(x, GroupedState))


def group_state(state: Any, params: Any, max_leaf_size: int = DEFAULT_MAX_LEAF_SIZE) -> Any:
  """Inverse of `ungroup_state`: a plain `inner` state packed for `grouped(inner)`.

  Args:
    state: ``inner``'s state on the plain tree (e.g. from a plain checkpoint
      or `optax_nadam.interop.state_from_torch`).
    params: the params it belongs to.
    max_leaf_size: the value given to `grouped`.

  Returns:
    ``GroupedState(packed inner state)``: every subtree with the structure of
    `params` is packed.
  """
  treedef = jax.tree.structure(params)
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]
  if treedef.num_leaves < 2:
    raise ValueError("group_state: params must be a tree of two or more leaves.")

  def is_params_like(x):
    if isinstance(x, GroupedState) or jax.tree.structure(x) != treedef:
      return False
    return [jnp.shape(leaf) for leaf in jax.tree.leaves(x)] == shapes

  return GroupedState(jax.tree.map(
      lambda x: _pack(x, max_leaf_size, like=params) if is_params_like(x) else x, state,
      is_leaf=is_params_like))
