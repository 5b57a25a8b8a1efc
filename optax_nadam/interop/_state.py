"""Peer-independent half of `optax_nadam.interop`: build our state from a peer's.

A peer optimizer is read into one `PeerSlot` per parameter (what that
parameter's slots hold, in our terms: count, mu-product, m, v, and the peer's
b1 and psi), plus optionally its `PeerHyperparams` and `PeerExtras`.
`build_state` turns those into the state of ``tx.init(params)``, one job a
step: fill each ``ScaleByNadamState``, fill the accumulation and EMA state,
check the momentum schedule, sync the schedule counters, check the whole step.
"""

import math
import warnings
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam._tree import path_str
from optax_nadam.interop._arrays import to_numpy, to_scalar
from optax_nadam.interop._check import PeerHyperparams, check_step
from optax_nadam.interop._nodes import owners, param_paths, read_state
from optax_nadam.transform import ScaleByNadamState, momentum_coefficient

__all__ = ["PeerExtras", "PeerHyperparams", "PeerSlot", "build_state", "param_paths",
           "read_state", "to_numpy", "to_scalar"]

_INT32_MAX = np.iinfo(np.int32).max
# The next momentum coefficient of tx and of the peer agree to float32 rounding
# of a few operations; a psi of 1.0 instead of 0.004 moves it by > 1e-3.
_SCHEDULE_RTOL = 1e-5
# Agreement of per-parameter mu-products (torch keeps one per parameter; the
# same step count and hyperparameters give bit-identical products).
_MU_PRODUCT_RTOL = 1e-6
_OWN_NADAM = ("Give each step count its own scale_by_nadam (optax.multi_transform over the "
              "leaves; resume_from_torch builds that tx), so each continues from its own step.")


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


def _as_moment(name: str, x: np.ndarray, like: jax.Array, where: str) -> jax.Array:
  """Validated copy of a peer moment, cast to `like`'s dtype and placement."""
  if np.shape(x) != np.shape(like):
    raise ValueError(f"{where}: {name} has shape {np.shape(x)}; the param has {like.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):  # numpy's floats and bfloat16 (ml_dtypes)
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


def _named_slots(slots: Sequence[Optional[PeerSlot]], params: Any) -> List[Optional[PeerSlot]]:
  """`slots` with each `where` naming its params leaf; refuses a count mismatch.

  A None slot is a leaf the peer does not train (frozen: left out of its optimizer).
  """
  paths = param_paths(params)
  if len(slots) != len(paths):
    raise ValueError(
        f"The peer optimizer has slots for {len(slots)} variables but params has "
        f"{len(paths)} leaves ({paths[:5]}{' ...' if len(paths) > 5 else ''}); they are "
        "matched one to one in order."
    )
  return [None if s is None else s._replace(where=f"{s.where} (params leaf {p})")
          for s, p in zip(slots, paths)]


def _frozen_in_tx(path: str, node_where: str) -> ValueError:
  return ValueError(
      f"params leaf {path} is not trained by the peer's optimizer (frozen: left out of it, "
      f"e.g. requires_grad=False), but {node_where} updates it. Leave it unchanged in tx: "
      "optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels) with "
      "'frozen' on such leaves (resume_from_torch builds that tx).")


def _node_scalars(slots: Sequence[Optional[PeerSlot]], held: Sequence[int], node_where: str,
                  paths: Sequence[str]):
  """The one (count, mu_product) of the parameters one nadam node holds."""
  frozen = [i for i in held if slots[i] is None]
  if frozen:
    raise _frozen_in_tx(paths[frozen[0]], node_where)
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
          f"advanced them separately (e.g. some had no gradient on some steps). {_OWN_NADAM}"
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
        f"{first.where} has taken {first.count} steps; they share one step count. "
        f"{_OWN_NADAM}"
    )
  count, mu_product = min(first.count, int(_INT32_MAX)), first.mu_product
  # 0 is legitimate: float32 underflow after ~900 steps at b1 = 0.9, or b1 = 0.
  _tree.check_mu_product(mu_product, f"{first.where}: mu_product")
  if count == 0 and mu_product != 1.0:
    raise ValueError(f"{first.where}: step count 0 but mu_product {mu_product} (expected 1).")
  return count, mu_product


def _filled_node(node: ScaleByNadamState, slots: Sequence[PeerSlot], index: dict,
                 count: int, mu_product: float) -> ScaleByNadamState:
  """`node` with the peer's count, mu-product and moments (untouched: never stepped)."""
  def moment(name, leaf_path, like):
    s = slots[index[leaf_path]]
    return like if s.count is None else _as_moment(name, getattr(s, name), like, s.where)

  def fill(name, tree):
    return jax.tree_util.tree_map_with_path(lambda p, x: moment(name, path_str(p), x), tree)

  return ScaleByNadamState(count=jnp.asarray(count, jnp.int32),
                           # float64 for float64 params (the core's dtype policy)
                           mu_product=jnp.asarray(mu_product, node.mu_product.dtype),
                           m=fill("m", node.m), v=fill("v", node.v))


def _frozen(slots: Sequence[Optional[PeerSlot]]) -> set:
  return {i for i, s in enumerate(slots) if s is None}


def _fill_nadam(state: Any, params: Any, slots: Sequence[PeerSlot]) -> Tuple[Any, set]:
  """Every `ScaleByNadamState` of `state` filled from `slots`; and the counts set."""
  paths = param_paths(params)
  index = {p: i for i, p in enumerate(paths)}
  held_by = dict(owners(state, params, _frozen(slots)))
  counts = set()

  def fill(node_path, node):
    count, mu_product = _node_scalars(
        slots, held_by[node_path], f"the scale_by_nadam at {path_str(node_path)}", paths)
    counts.add(count)
    return _filled_node(node, slots, index, count, mu_product)

  return _tree.map_nodes(state, ScaleByNadamState, fill), counts


def _params_like(name: str, arrays: Sequence[np.ndarray], like: Any, slots) -> Any:
  """A tree shaped like `like` (params-shaped) from per-leaf peer arrays."""
  leaves, treedef = jax.tree.flatten(like)
  out = [_as_moment(name, a, x, s.where) for a, x, s in zip(arrays, leaves, slots)]
  return jax.tree.unflatten(treedef, out)


def _fill_accumulation(state: Any, count: int, extras: PeerExtras, slots) -> Any:
  """The `optax.MultiSteps` state: the peer's mini-step and accumulated gradients."""
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

  return _tree.map_nodes(state, optax.MultiStepsState, fix)


def _has_ema(params: Any):
  """Is-leaf test for a state node with an ``ema`` field shaped like `params`."""
  structure = jax.tree.structure(params)

  def test(x):
    ema = getattr(x, "ema", None) if hasattr(x, "_fields") else None
    return ema is not None and jax.tree.structure(ema) == structure
  return test


def _fill_ema(state: Any, params: Any, ema: Optional[List[np.ndarray]], slots) -> Any:
  """The peer's EMA averages into tx's params-shaped ``ema`` field, or a warning."""
  if ema is None:
    return state
  has_ema = _has_ema(params)
  if not any(has_ema(x) for x in jax.tree.leaves(state, is_leaf=has_ema)):
    warnings.warn(
        "The peer keeps EMA averages of the model variables (use_ema) and tx has no place "
        "for them (optax_nadam.keras.Nadam(use_ema=True) has); they are not imported.",
        stacklevel=4)
    return state
  return jax.tree.map(
      lambda x: x._replace(ema=_params_like("EMA average", ema, x.ema, slots))
      if has_ema(x) else x, state, is_leaf=has_ema)


def _check_schedule(tx, state, params, slots) -> None:
  """Raises unless tx's next momentum coefficient is the peer's.

  One update on zero gradients from `state` with each mu-product set to 1
  leaves tx's ``mu_{t+1}`` in the new mu-product; the peer's is computed from
  its b1 and psi. This catches the Keras 3 trap (psi = 1, not 0.004) and a b1
  that differs, before the first real step goes wrong.
  """
  probe = _tree.map_nodes(state, ScaleByNadamState,
                          lambda _, n: n._replace(mu_product=jnp.ones_like(n.mu_product)))
  _, after = tx.update(jax.tree.map(jnp.zeros_like, params), probe, params)
  after_nodes = dict(_tree.find_nodes(after, ScaleByNadamState))
  before_nodes = dict(_tree.find_nodes(probe, ScaleByNadamState))
  for node_path, held in owners(state, params, _frozen(slots)):
    old, new = before_nodes[node_path], after_nodes.get(node_path)
    if new is None or int(new.count) == int(old.count):
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


def build_state(
    tx: optax.GradientTransformation,
    params: Any,
    slots: Sequence[PeerSlot],
    *,
    sync_schedules: bool,
    check_schedule: bool,
    extras: Optional[PeerExtras] = None,
    hyperparams: Optional[Sequence[PeerHyperparams]] = None,
    check_hyperparams: Optional[bool] = None,
) -> Any:
  """``tx.init(params)`` with its ScaleByNadamState(s) filled from `slots`.

  Args:
    tx: the optax transformation that will continue training.
    params: the params tree; ``slots[i]`` belongs to ``jax.tree.leaves(params)[i]``.
    slots: one `PeerSlot` per params leaf.
    sync_schedules: also set the step count of schedules / inject_hyperparams.
    check_schedule: probe tx's momentum schedule against the peer's.
    extras: Keras 3 accumulation / EMA state to fill in where tx has a place.
    hyperparams: one `PeerHyperparams` per params leaf, or None (not known).
    check_hyperparams: probe tx's whole next step against `hyperparams`
      (`optax_nadam.interop._check.check_step`); None means `check_schedule`.

  Returns:
    The filled state.
  """
  extras = extras or PeerExtras()
  slots = _named_slots(slots, params)
  state, counts = _fill_nadam(tx.init(params), params, slots)
  if len(counts) == 1:
    state = _fill_accumulation(state, next(iter(counts)), extras, slots)
    state = _fill_ema(state, params, extras.ema, slots)
  if check_schedule:
    _check_schedule(tx, state, params, slots)
  if sync_schedules and len(counts) == 1:
    state = _sync_counters(state, next(iter(counts)))
  if check_hyperparams is None:
    check_hyperparams = check_schedule
  if check_hyperparams and hyperparams is not None:
    paths = param_paths(params)
    check_step(tx, state, params, hyperparams,
               [p if s is None else s.where for s, p in zip(slots, paths)])
  return state
