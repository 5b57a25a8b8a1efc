"""Is tx the Keras peer's optimizer? Configs compared directly, other txs probed (private).

A Keras file or optimizer states its hyperparameters (its config). When tx is
the Keras front (`optax_nadam.keras.Nadam`), its config is compared with the
peer's key by key (`compare_configs`): exact, and nothing to estimate. Any
other tx is probed (`optax_nadam.interop._check.check_step`), on a state set
to the last call of an accumulation cycle, so that tx's next update is a step
of the Nadam whatever the peer's position in its cycle (`check`).
"""

import math
import numbers
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from optax_nadam import _tree
from optax_nadam.interop._check import PeerHyperparams, check_step
from optax_nadam.transform import ScaleByNadamState

# Keras stores hyperparameters as float32 (0.01 -> 0.009999999776482582).
_CONFIG_RTOL = 1e-6
# Keys a TF checkpoint does not store: not compared (taken as tf-keras's defaults).
_UNSTATED_IN_CHECKPOINTS = ("epsilon", "clipnorm", "clipvalue", "global_clipnorm")


def keras_front(tx: Any) -> bool:
  """True for an `optax_nadam.keras.Nadam` (its config can be compared directly)."""
  from optax_nadam.keras import Nadam

  return isinstance(tx, Nadam)


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, dict) and isinstance(b, dict):
    return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
    return a is b or a == b
  if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
    return math.isclose(float(a), float(b), rel_tol=_CONFIG_RTOL, abs_tol=0.0)
  return a == b


def compare_configs(tx: Any, peer_config: Dict[str, Any], where: str,
                    complete: bool = True) -> None:
  """Raises unless the Keras front `tx` has the peer's config (every stated key).

  Args:
    tx: an `optax_nadam.keras.Nadam`.
    peer_config: the peer optimizer's ``get_config()`` (from a file or live).
    where: names the source in the message.
    complete: False for a TF checkpoint (no epsilon, no clipping stored).

  Raises:
    ValueError: naming each differing key with both values and the fix.
  """
  from optax_nadam.keras import Nadam

  peer = Nadam.from_config(dict(peer_config)).get_config()
  ours = tx.get_config()
  # Keras does not put its weight-decay exclusions in get_config(): compared as masks.
  skip = {"name", "exclude_from_weight_decay"} | (
      set() if complete else set(_UNSTATED_IN_CHECKPOINTS))
  differ = [k for k in peer if k not in skip and not _same(peer[k], ours.get(k))]
  if differ:
    listing = "; ".join(f"{k}: the peer has {peer[k]!r}, tx has {ours.get(k)!r}"
                        for k in differ)
    raise ValueError(
        f"{where}: tx's config is not the peer's ({listing}). The tx that continues the "
        "peer's run: optax_nadam.keras.Nadam.from_config(optimizer_config_from_keras(...)), "
        "or resume_from_keras(...), which builds it. If the change is deliberate (e.g. a new "
        "learning rate after resuming), pass check_hyperparams=False.")


def _last_call_of_cycle(state: Any, k: int) -> Any:
  """`state` with each `optax.MultiStepsState` on the cycle's last call, nothing summed."""
  def fix(_, node):
    return node._replace(mini_step=jnp.asarray(k - 1, node.mini_step.dtype),
                         acc_grads=jax.tree.map(jnp.zeros_like, node.acc_grads))

  return _tree.map_nodes(state, optax.MultiStepsState, fix)


def check(tx: Any, state: Any, params: Any, hypers: Sequence[PeerHyperparams],
          where: Sequence[str], accumulation: int) -> None:
  """Probes tx's next Nadam step against the peer's hyperparameters.

  With gradient accumulation over k calls (the peer's
  ``gradient_accumulation_steps``) the peer's step applies the mean of k
  gradients. The probe state is set to the last call of a cycle with nothing
  accumulated and tx gets k times the probe gradient, so that the peer's
  step on the probe is the step `check_step` models; tx must step then.

  Raises:
    ValueError: tx does not step when the peer does (another accumulation),
      or its step differs (`check_step`'s message).
  """
  k = max(int(accumulation), 1)
  has_multi = bool(_tree.find_nodes(state, optax.MultiStepsState))
  if k > 1 and not has_multi:
    raise ValueError(
        f"{where[0]}: the peer accumulates gradients over {k} update calls "
        "(gradient_accumulation_steps) and tx does not (it has no optax.MultiSteps), so it "
        "would step on every call. Use optax_nadam.keras.Nadam(..., "
        f"gradient_accumulation_steps={k}) or optax.MultiSteps(tx, {k}).")
  if has_multi:
    state = _last_call_of_cycle(state, k)
  before = [int(n.count) for _, n in _tree.find_nodes(state, ScaleByNadamState)]
  zeros = jax.tree.map(jnp.zeros_like, params)
  _, after = tx.update(zeros, state, params)
  if [int(n.count) for _, n in _tree.find_nodes(after, ScaleByNadamState)] == before:
    raise ValueError(
        f"{where[0]}: the peer applies a Nadam step every {k} update call(s), and tx does "
        "not step on the call where the peer does (it accumulates gradients over more "
        "calls). Build tx with the peer's gradient_accumulation_steps.")
  if k > 1:
    inner = tx
    tx = optax.GradientTransformation(
        inner.init, lambda u, s, p=None: inner.update(jax.tree.map(lambda g: g * k, u), s, p))
  check_step(tx, state, params, hypers, list(where))


def hypers_for(hyper: Dict[str, Any], n: int,
               decayed: Optional[Sequence[bool]] = None) -> List[PeerHyperparams]:
  """One `PeerHyperparams` per params leaf from a `hyper.hyperparams` dict.

  `decayed`: per leaf, whether the peer applies its weight decay (its
  ``exclude_from_weight_decay``); None: every leaf.
  """
  if decayed is None:
    return [PeerHyperparams(**hyper)] * n
  return [PeerHyperparams(**{**hyper, "weight_decay": hyper["weight_decay"] if d else 0.0})
          for d in decayed]


def compare_decay_masks(tx: Any, params: Any, decayed: Sequence[bool], where: str) -> None:
  """Raises unless the Keras front `tx` decays exactly the leaves the live peer decays."""
  from optax_nadam.keras.build import decay_mask

  ours = jax.tree.leaves(decay_mask(tx.get_config()["exclude_from_weight_decay"], params))
  if [bool(x) for x in ours] != [bool(d) for d in decayed]:
    names = _tree.leaf_names(params)
    show = lambda flags: [n for n, f in zip(names, flags) if not f][:8]  # noqa: E731
    raise ValueError(
        f"{where}: tx's weight decay excludes params leaves {show(ours)}, the peer's "
        f"exclude_from_weight_decay excludes {show(decayed)}. The tx that continues the run: "
        "resume_from_keras(model, like) builds it; or Nadam(..., exclude_from_weight_decay="
        "[regexes of those leaf paths]).")
