"""Peer-independent half of `optax_nadam.interop`: build and read our state.

A peer optimizer is read into one `PeerSlot` per parameter (what that
parameter's slots hold, in our terms: count, mu-product, m, v, and the
peer's b1 and psi). `build_state` turns those into the state of `tx.init(params)`
with every `ScaleByNadamState` filled, validating as it goes, and `read_state`
goes the other way for the export direction.
"""

import math
import sys
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam._tree import path_str as _path_str
from optax_nadam.transform import ScaleByNadamState, momentum_coefficient

_INT32_MAX = np.iinfo(np.int32).max
# The next momentum coefficient of tx and of the peer agree to float32 rounding
# of a few operations; a psi of 1.0 instead of 0.004 moves it by > 1e-3.
_SCHEDULE_RTOL = 1e-5
# Agreement of per-parameter mu-products (torch keeps one per parameter; the
# same step count and hyperparameters give bit-identical products).
_MU_PRODUCT_RTOL = 1e-6


class PeerSlot(NamedTuple):
  """One parameter's optimizer slots as read from a peer, in our terms."""

  where: str  # how to name this variable in an error message
  count: Optional[int]  # steps taken; None when the peer holds no state for it
  mu_product: Optional[float]
  m: Optional[np.ndarray]
  v: Optional[np.ndarray]
  b1: float  # the peer's momentum coefficient for this parameter
  psi: float  # the peer's momentum_decay for this parameter


class PeerExtras(NamedTuple):
  """State a Keras 3 optimizer keeps besides the Nadam slots (per params leaf)."""

  mini_step: int = 0  # update calls since the last applied step (accumulation)
  accumulators: Optional[List[np.ndarray]] = None  # summed gradients, or None
  ema: Optional[List[np.ndarray]] = None  # moving averages of the variables, or None


def find_nadam_states(state: Any) -> List[Tuple[Any, ScaleByNadamState]]:
  """All `ScaleByNadamState` nodes of an optax state, with their tree paths."""
  return _tree.find_nodes(state, ScaleByNadamState)


param_paths = _tree.leaf_paths


def _owners(state: Any, params: Any) -> List[Tuple[Any, List[int]]]:
  """For each nadam node of `state`, the indices of the param leaves it holds.

  Raises ValueError unless every param leaf is held by exactly one node (one
  `scale_by_nadam`, or several on disjoint parts as with `optax.multi_transform`).
  """
  nodes = find_nadam_states(state)
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
    for leaf_path, _ in jax.tree_util.tree_flatten_with_path(node.m)[0]:
      key = _path_str(leaf_path)
      if key not in index:
        raise ValueError(
            f"The ScaleByNadamState at {_path_str(node_path)} holds a moment at {key}, "
            "which is not a leaf path of params. Its moments must be shaped like the "
            "params (not e.g. flattened by optax.flatten)."
        )
      i = index[key]
      if i in owner:
        raise ValueError(
            f"params leaf {key} is held by two ScaleByNadamStates ({owner[i]} and "
            f"{_path_str(node_path)}); a peer optimizer has one set of slots per "
            "parameter, so tx must apply scale_by_nadam to it once."
        )
      owner[i] = _path_str(node_path)
      held.append(i)
    result.append((node_path, held))
  missing = [p for p, i in index.items() if i not in owner]
  if missing:
    raise ValueError(
        f"params leaves {missing[:5]} are not held by any scale_by_nadam in tx; the "
        "peer's slots for them would be lost."
    )
  return result


def _as_moment(name: str, x: np.ndarray, like: jax.Array, where: str) -> jax.Array:
  """Validated copy of a peer moment, cast to `like`'s dtype and placement."""
  if np.shape(x) != np.shape(like):
    raise ValueError(f"{where}: {name} has shape {np.shape(x)}; the param has {like.shape}.")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{where}: {name} has dtype {x.dtype}; a real floating dtype is needed.")
  if jnp.issubdtype(like.dtype, jnp.complexfloating):
    raise ValueError(
        f"{where}: the param is complex ({like.dtype}) but the peer's {name} is real; "
        "the peers treat real and imaginary parts as separate coordinates, which is "
        "not this optimizer's complex rule."
    )
  cast = np.asarray(x).astype(like.dtype)  # astype always copies: no memory shared
  if not np.all(np.isfinite(cast if cast.dtype == np.float64 else cast.astype(np.float32))):
    raise ValueError(f"{where}: {name} holds NaN or Inf (after casting to {like.dtype}).")
  if name == "v" and np.any(cast < 0):
    raise ValueError(f"{where}: v (second moment) has negative entries.")
  sharding = getattr(like, "sharding", None)
  return jax.device_put(cast, sharding) if sharding is not None else jnp.asarray(cast)


def _node_scalars(slots: Sequence[PeerSlot], held: Sequence[int], node_where: str):
  """The one (count, mu_product) of the parameters one nadam node holds."""
  stepped = [i for i in held if slots[i].count is not None]
  if not stepped:
    return 0, 1.0
  first = slots[stepped[0]]
  for i in stepped:
    s = slots[i]
    if s.count != first.count:
      raise ValueError(
          f"{s.where} has taken {s.count} steps but {first.where} has taken "
          f"{first.count}; the parameters of {node_where} share one step count. The peer "
          "advanced them separately (e.g. some had no gradient on some steps)."
      )
    if not math.isclose(s.mu_product, first.mu_product, rel_tol=_MU_PRODUCT_RTOL):
      raise ValueError(
          f"{s.where} has mu_product {s.mu_product} but {first.where} has "
          f"{first.mu_product} at the same step count; they share one mu-product."
      )
  unstepped = [i for i in held if slots[i].count is None]
  if unstepped and first.count != 0:
    raise ValueError(
        f"{slots[unstepped[0]].where} has no optimizer state (never stepped) while "
        f"{first.where} has taken {first.count} steps; they share one step count."
    )
  return min(first.count, int(_INT32_MAX)), first.mu_product


def _replace_at(tree: Any, path: Any, new: Any) -> Any:
  """`tree` with the `ScaleByNadamState` at `path` replaced by `new`."""
  return _tree.map_nodes(tree, ScaleByNadamState, lambda p, x: new if p == path else x)


_COUNTERS = (optax.ScaleByScheduleState, optax.InjectHyperparamsState,
             optax.InjectStatefulHyperparamsState)


def _sync_counters(state: Any, count: int) -> Any:
  """Sets the step counter of schedules and inject_hyperparams wrappers."""
  is_counter = lambda x: isinstance(x, _COUNTERS)  # noqa: E731

  def fix(x):
    if not is_counter(x):
      return x
    return x._replace(count=jnp.asarray(count, jnp.asarray(x.count).dtype))

  return jax.tree.map(fix, state, is_leaf=is_counter)


def _params_like(name: str, arrays: Sequence[np.ndarray], like: Any, slots) -> Any:
  """A tree shaped like `like` (params-shaped) from per-leaf peer arrays."""
  leaves, treedef = jax.tree.flatten(like)
  out = [_as_moment(name, a, x, s.where) for a, x, s in zip(arrays, leaves, slots)]
  return jax.tree.unflatten(treedef, out)


def _fill_extras(state: Any, count: int, extras: PeerExtras, slots) -> Any:
  """Gradient accumulation (`optax.MultiSteps`) and Keras-front EMA state."""
  from optax_nadam.keras.optimizer import KerasNadamState  # the front imports nothing of ours here

  multi = _tree.find_nodes(state, optax.MultiStepsState)
  pending = extras.mini_step != 0 or any(
      np.any(a != 0) for a in (extras.accumulators or []))
  if pending and not multi:
    raise ValueError(
        f"The peer is {extras.mini_step} update calls into a gradient accumulation cycle; "
        "tx has no optax.MultiSteps to hold the accumulated gradients. Import right after "
        "an applied step, or use a tx with the same accumulation."
    )
  if len(multi) > 1:
    raise ValueError("tx holds several optax.MultiSteps; cannot tell which one to fill.")

  def fix(_, node):
    acc = node.acc_grads
    if extras.accumulators is not None:
      acc = _params_like("accumulated gradient", extras.accumulators, acc, slots)
    else:
      acc = jax.tree.map(jnp.zeros_like, acc)
    return node._replace(
        mini_step=jnp.asarray(extras.mini_step, node.mini_step.dtype),
        gradient_step=jnp.asarray(count, node.gradient_step.dtype),
        acc_grads=acc)

  state = _tree.map_nodes(state, optax.MultiStepsState, fix)
  has_ema = isinstance(state, KerasNadamState) and not isinstance(state.ema, optax.EmptyState)
  if extras.ema is not None and has_ema:
    state = state._replace(ema=_params_like("EMA average", extras.ema, state.ema, slots))
  elif extras.ema is not None:
    warnings.warn(
        "The peer keeps EMA averages of the model variables (use_ema) and tx has no place "
        "for them (optax_nadam.keras.Nadam(use_ema=True) has); they are not imported.",
        stacklevel=4)
  return state


def _check_schedule(tx, state, params, slots, owners) -> None:
  """Raises unless tx's next momentum coefficient is the peer's.

  One update on zero gradients from `state` with each mu-product set to 1
  leaves tx's ``mu_{t+1}`` in the new mu-product; the peer's is computed from
  its b1 and psi. This catches the Keras 3 trap (psi = 1, not 0.004) and a b1
  that differs, before the first real step goes wrong.
  """
  probe = state
  for node_path, _ in owners:
    node = dict(find_nadam_states(probe))[node_path]
    probe = _replace_at(probe, node_path, node._replace(mu_product=jnp.ones_like(node.mu_product)))
  zeros = jax.tree.map(jnp.zeros_like, params)
  _, after = tx.update(zeros, probe, params)
  after_nodes = dict(find_nadam_states(after))
  before_nodes = dict(find_nadam_states(probe))
  for node_path, held in owners:
    if not held or node_path not in after_nodes:
      continue
    old, new = before_nodes[node_path], after_nodes[node_path]
    if int(new.count) == int(old.count):
      continue  # this update did not step the nadam (accumulation, skipped step)
    t = int(new.count)
    ours = float(new.mu_product)
    for i in held:
      s = slots[i]
      theirs = momentum_coefficient(s.b1, s.psi, t)
      if not math.isclose(ours, theirs, rel_tol=_SCHEDULE_RTOL):
        raise ValueError(
            f"tx's momentum schedule gives mu_{t} = {ours:.7g} but the peer's (beta_1 = "
            f"{s.b1:g}, momentum_decay = {s.psi:g}) gives {theirs:.7g} for {s.where}: the "
            "trajectory would not continue. Build tx with the peer's b1 and "
            "momentum_decay (Keras 3 and tf_keras.optimizers.Nadam use momentum_decay=1.0; "
            "tf-keras legacy uses its schedule_decay, torch its momentum_decay)."
        )


def build_state(
    tx: optax.GradientTransformation,
    params: Any,
    slots: Sequence[PeerSlot],
    *,
    sync_schedules: bool,
    check_schedule: bool,
    extras: Optional[PeerExtras] = None,
) -> Any:
  """``tx.init(params)`` with its ScaleByNadamState(s) filled from `slots`.

  Args:
    tx: the optax transformation that will continue training.
    params: the params tree; ``slots[i]`` belongs to ``jax.tree.leaves(params)[i]``.
    slots: one `PeerSlot` per params leaf.
    sync_schedules: also set the step count of schedules / inject_hyperparams.
    check_schedule: probe tx's momentum schedule against the peer's.
    extras: Keras 3 accumulation / EMA state to fill in where tx has a place.

  Returns:
    The filled state.
  """
  extras = extras or PeerExtras()
  paths = param_paths(params)
  if len(slots) != len(paths):
    raise ValueError(
        f"The peer optimizer has slots for {len(slots)} variables but params has "
        f"{len(paths)} leaves ({paths[:5]}{' ...' if len(paths) > 5 else ''}); they are "
        "matched one to one in order."
    )
  slots = [s._replace(where=f"{s.where} (params leaf {p})") for s, p in zip(slots, paths)]
  state = tx.init(params)
  owners = _owners(state, params)
  counts = set()
  for node_path, held in owners:
    node = dict(find_nadam_states(state))[node_path]
    count, mu_product = _node_scalars(slots, held, f"the scale_by_nadam at "
                                      f"{_path_str(node_path)}")
    # 0 is legitimate: float32 underflow after ~900 steps at b1 = 0.9, or b1 = 0.
    _tree.check_mu_product(mu_product, f"{slots[held[0]].where}: mu_product")
    if count == 0 and mu_product != 1.0:
      raise ValueError(
          f"{slots[held[0]].where}: step count 0 but mu_product {mu_product} (expected 1)."
      )
    counts.add(count)
    held_set = set(held)
    m_leaves, m_def = jax.tree_util.tree_flatten_with_path(node.m)
    v_leaves = jax.tree.leaves(node.v)
    index = {p: i for i, p in enumerate(paths)}
    new_m, new_v = [], []
    for (leaf_path, m_like), v_like in zip(m_leaves, v_leaves):
      i = index[_path_str(leaf_path)]
      assert i in held_set
      s = slots[i]
      if s.count is None:
        new_m.append(m_like)
        new_v.append(v_like)
      else:
        new_m.append(_as_moment("m", s.m, m_like, s.where))
        new_v.append(_as_moment("v", s.v, v_like, s.where))
    filled = ScaleByNadamState(
        count=jnp.asarray(count, jnp.int32),
        mu_product=jnp.asarray(mu_product, node.mu_product.dtype),  # float64 for float64 params
        m=jax.tree_util.tree_unflatten(m_def, new_m),
        v=jax.tree_util.tree_unflatten(jax.tree.structure(node.v), new_v),
    )
    state = _replace_at(state, node_path, filled)
  if len(counts) == 1:
    state = _fill_extras(state, next(iter(counts)), extras, slots)
  if check_schedule:
    _check_schedule(tx, state, params, slots, owners)
  if sync_schedules and len(counts) == 1:
    state = _sync_counters(state, counts.pop())
  return state


def _to_numpy(x: Any) -> np.ndarray:
  """A numpy copy; dtypes numpy has no native kind for (bfloat16) become float32."""
  x = np.array(x)
  return x if x.dtype in (np.float16, np.float32, np.float64) else x.astype(np.float32)


def read_state(state: Any, params: Any) -> List[Tuple[int, np.floating, np.ndarray, np.ndarray]]:
  """Per params leaf, ``(count, mu_product, m, v)`` (numpy copies) from `state`.

  ``mu_product`` is a numpy scalar of the state's dtype (float32, or float64
  for float64 params), so an export keeps every bit.

  Args:
    state: a state of a tx containing scale_by_nadam, for `params`.
    params: the params tree (fixes the leaf order).

  Returns:
    One tuple per ``jax.tree.leaves(params)`` entry.
  """
  owners = _owners(state, params)
  nodes = dict(find_nadam_states(state))
  paths = param_paths(params)
  index = {p: i for i, p in enumerate(paths)}
  out: List[Any] = [None] * len(paths)
  for node_path, _ in owners:
    node = nodes[node_path]
    count, mu_product = int(node.count), np.asarray(node.mu_product)[()]
    m_leaves = jax.tree_util.tree_flatten_with_path(node.m)[0]
    for (leaf_path, m), v in zip(m_leaves, jax.tree.leaves(node.v)):
      if jnp.iscomplexobj(m):
        raise ValueError(
            f"params leaf {_path_str(leaf_path)} is complex; the peers' complex rule "
            "differs from this optimizer's, so its state cannot be exported."
        )
      out[index[_path_str(leaf_path)]] = (count, mu_product, _to_numpy(m), _to_numpy(v))
  return out


def is_torch_tensor(x: Any) -> bool:
  torch = sys.modules.get("torch")
  return torch is not None and isinstance(x, torch.Tensor)


def to_array(x: Any, where: str) -> np.ndarray:
  """A private numpy copy of a tensor / array / number (never a view of it)."""
  if is_torch_tensor(x):
    import torch

    t = x.detach().to("cpu")
    if t.is_complex():
      raise ValueError(
          f"{where} is complex; torch NAdam treats real and imaginary parts as "
          "separate coordinates, which is not this optimizer's complex rule."
      )
    if t.dtype in (torch.bfloat16,):  # numpy has no bfloat16
      t = t.to(torch.float32)
    return np.array(t.numpy(), copy=True)  # .numpy() shares memory with the tensor
  if isinstance(x, np.ndarray) or isinstance(x, np.generic):
    return np.array(x, copy=True)
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return np.array(x)
  raise TypeError(f"{where} is a {type(x).__name__}; expected a tensor, array or number.")


def to_scalar(x: Any, where: str) -> float:
  a = to_array(x, where)
  if a.size != 1:
    raise ValueError(f"{where} has shape {a.shape}; expected a scalar.")
  value = float(a.reshape(()))
  if not math.isfinite(value):
    raise ValueError(f"{where} is {value}.")
  return value
