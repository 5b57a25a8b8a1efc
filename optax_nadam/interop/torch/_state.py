"""A torch NAdam state dict in our terms: per parameter its slot, hyperparameters and leaf.

`read_optimizer` reads every parameter of every param group (with the names
torch wrote into the group, if any); `pair_optimizer` finds the params leaf of
each under the pairing rule (`optax_nadam.interop._pairing`);
`torch_tx` builds the optax transformation that takes torch's step (`_check.peer_tx`).
"""

from typing import Any, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam.interop import _pairing as pairing
from optax_nadam.interop._arrays import to_numpy, to_scalar
from optax_nadam.interop._check import PeerHyperparams, peer_tx, printable
from optax_nadam.interop._nodes import param_paths
from optax_nadam.interop._state import PeerSlot
from optax_nadam.interop.torch._sources import Checkpoint

_TORCH_STATE_KEYS = ("step", "mu_product", "exp_avg", "exp_avg_sq")


class TorchParam(NamedTuple):
  """One parameter of a torch optimizer, as its state dict describes it."""

  group: int
  name: Optional[str]  # from the group's param_names or the caller's param_names
  slot: PeerSlot
  hyper: PeerHyperparams


def _scalar(x: Any, where: str) -> float:
  return to_scalar(to_numpy(x, where), where)


def group_hyperparams(group: Mapping, name: str) -> PeerHyperparams:
  """One param group's hyperparameters (`name`: the group, for messages)."""
  for key in ("params", "betas", "momentum_decay"):
    if key not in group:
      raise ValueError(
          f"{name} has no {key!r}: not a torch.optim.NAdam state dict (its keys: "
          f"{sorted(map(str, group))}). Another optimizer's state (torch Adam, AdamW and "
          "RAdam keep step, exp_avg and exp_avg_sq, no momentum_decay and no mu_product) does "
          "not continue NAdam's trajectory; start NAdam fresh with tx.init(params).")
  betas = group["betas"]
  if not isinstance(betas, (list, tuple)) or len(betas) != 2:
    raise ValueError(f"{name}['betas'] is {betas!r}; NAdam's betas are a pair (beta1, beta2).")
  b1, b2 = (_scalar(b, f"{name}['betas'][{k}]") for k, b in enumerate(betas))
  return PeerHyperparams(
      learning_rate=_scalar(group.get("lr", 0.0), f"{name}['lr']"), b1=b1, b2=b2,
      eps=_scalar(group.get("eps", 1e-8), f"{name}['eps']"),
      psi=_scalar(group["momentum_decay"], f"{name}['momentum_decay']"),
      weight_decay=_scalar(group.get("weight_decay", 0.0), f"{name}['weight_decay']"),
      decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
      maximize=bool(group.get("maximize", False)))


def _slot(entry: Any, where: str, h: PeerHyperparams) -> PeerSlot:
  """One parameter's NAdam state entry, validated, as a `PeerSlot`."""
  if not entry:
    return PeerSlot(where, None, None, None, None, h.b1, h.psi)
  if not isinstance(entry, Mapping):
    raise TypeError(f"{where}: its state is a {type(entry).__name__}, not a dict.")
  missing = [k for k in _TORCH_STATE_KEYS if k not in entry]
  extra = [k for k in entry if k not in _TORCH_STATE_KEYS]
  if missing or extra:
    hint = " (torch Adam keeps no mu_product: this is not a NAdam state)" if (
        missing == ["mu_product"] and not extra) else ""
    raise ValueError(
        f"{where}: state keys {sorted(map(str, entry))}; NAdam has {list(_TORCH_STATE_KEYS)}"
        f" (missing {missing}, unexpected {extra}){hint}.")
  step = _scalar(entry["step"], f"{where} step")
  if step < 0 or step != int(step):
    raise ValueError(f"{where}: step is {step}; a step count is an integer >= 0.")
  mu_product = _scalar(entry["mu_product"], f"{where} mu_product")
  _tree.check_mu_product(mu_product, f"{where}: mu_product")
  return PeerSlot(where, int(step), mu_product,
                  to_numpy(entry["exp_avg"], f"{where} exp_avg"),
                  to_numpy(entry["exp_avg_sq"], f"{where} exp_avg_sq"), h.b1, h.psi)


def names_of(groups: Sequence[Mapping], param_names: Any) -> List[Optional[List[str]]]:
  """Per group the parameter names: the caller's, else torch's ``param_names``, else DCP's.

  ``get_state_dict`` (torch.distributed.checkpoint) lists each group's
  parameters by their FQNs instead of integer ids: those are names too.
  """
  sizes = [len(g["params"]) for g in groups]
  if param_names is None:
    out = []
    for g, group in enumerate(groups):
      names = group.get("param_names")
      if names is not None and (not isinstance(names, (list, tuple)) or len(names) != sizes[g]
                                or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"param_groups[{g}]['param_names'] is not {sizes[g]} strings.")
      if names is None and group["params"] and all(
          isinstance(p, str) and not p.isdigit() for p in group["params"]):
        names = group["params"]  # DCP's FQN keys
      out.append(None if names is None else list(names))
    return out
  if not isinstance(param_names, (list, tuple)):
    raise TypeError("param_names must be a list of names (or one list per param group).")
  if all(isinstance(n, str) for n in param_names):
    if len(param_names) != sum(sizes):
      raise ValueError(f"param_names has {len(param_names)} names but the optimizer has "
                       f"{sum(sizes)} parameters (param groups of {sizes}).")
    it = iter(param_names)
    return [[next(it) for _ in range(n)] for n in sizes]
  if len(param_names) != len(sizes) or any(
      not isinstance(ns, (list, tuple)) or len(ns) != n or not all(isinstance(x, str) for x in ns)
      for ns, n in zip(param_names, sizes)):
    raise ValueError(f"param_names must hold one list of names per param group, of sizes "
                     f"{sizes}.")
  return [list(ns) for ns in param_names]


def read_optimizer(sd: Mapping, prefix: str, param_names: Any = None) -> List[TorchParam]:
  """Per torch parameter (``param_groups`` order) its name, slot and hyperparameters."""
  for key in ("state", "param_groups"):
    if key not in sd:
      raise ValueError(f"The torch state dict has no {key!r} key (keys: {sorted(sd)}).")
  groups, states = sd["param_groups"], sd["state"]
  if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
    raise TypeError("state_dict['param_groups'] must be a list of dicts.")
  if not isinstance(states, Mapping):
    raise TypeError("state_dict['state'] must be a dict.")
  hypers = [group_hyperparams(g, f"{prefix}param_groups[{i}]") for i, g in enumerate(groups)]
  names = names_of(groups, param_names)
  out, seen = [], set()
  for g, group in enumerate(groups):
    for k, pid in enumerate(group["params"]):
      key = pid if pid in states else str(pid)  # DCP writes the state keys as strings
      seen.add(key)
      name = None if names[g] is None else names[g][k]
      where = (f"{prefix}torch parameter {len(out)} (param_groups[{g}], id {pid}"
               f"{', ' + name if name and name != pid else ''})")
      out.append(TorchParam(g, name, _slot(states.get(key), where, hypers[g]), hypers[g]))
  stray = [k for k in states if k not in seen]
  if stray:
    raise ValueError(f"state_dict['state'] has entries {stray[:5]} for no parameter of any group.")
  return out


ASSUMPTION = ("One param group saved without names is taken to be NAdam(model.parameters()), "
              "in the module's registration order")
_FIX = ("Give the names: build the optimizer from model.named_parameters() (torch then writes "
        "param_names into each param group), or pass param_names= (one list per param group, "
        "each in the group's order, e.g. [[n for n, p in model.named_parameters() if p in "
        "group0], ...]; for frozen parameters left out of the optimizer, [n for n, p in "
        "model.named_parameters() if p.requires_grad]).")


def _refusal(params: Sequence[TorchParam], why: str, where: str, by_position: bool) -> str:
  shapes = [None if p.slot.m is None else tuple(np.shape(p.slot.m)) for p in params]
  return (f"{where}: which params leaf each of the optimizer's {len(params)} parameters "
          f"belongs to cannot be proven: {why}{pairing.equal_shapes(shapes, 'torch parameters')}."
          + (" torch keys its optimizer state by position in the param groups, not by name. "
             if by_position else " ")
          + f"{ASSUMPTION}, and only beside a model state dict made by module.state_dict(). "
          + _FIX)


def name_leaves(names: Sequence[str], shapes, leaves: pairing.LikeLeaves, layout: Any = None,
                via_model=None) -> Optional[List[Optional[int]]]:
  """Per name the leaf it names (or, through `via_model`, the leaf of its model entry).

  None when no name fits a leaf at all (like's names are not the model's, e.g. a list).
  """
  index = {n: i for i, n in enumerate(leaves.names)}
  stripped = pairing.strip_prefixes(list(names), leaves)
  out = [index.get(pairing.torch_name(n, tuple(s or ()), layout)[0])
         for n, s in zip(stripped, shapes)]
  if via_model is not None:
    out = [i if i is not None else via_model(n) for n, i in zip(names, out)]
  if all(i is None for i in out) and not callable(getattr(layout, "leaf_name", None)):
    return None
  return out


def _via_model(model: Optional[dict], entry_leaf: Optional[List[Optional[int]]],
               leaves: pairing.LikeLeaves):
  """name -> the leaf its model entry (or a tensor tied to it) fills, or None."""
  if not model or entry_leaf is None:
    return None
  names = list(model)
  entries = list(model.values())
  stripped = dict(zip(pairing.strip_prefixes(names, leaves), range(len(names))))
  raw = {n: k for k, n in enumerate(names)}

  def leaf(name):
    k = raw.get(name)
    if k is None:
      k = stripped.get(pairing.strip_prefixes([name], leaves)[0])
    if k is None:
      return None
    if entry_leaf[k] is not None:
      return entry_leaf[k]
    tie = entries[k].tie
    tied = [entry_leaf[j] for j, e in enumerate(entries)
            if tie is not None and e.tie == tie and entry_leaf[j] is not None]
    return tied[0] if tied else None
  return leaf


def pair_optimizer(params: List[TorchParam], model: Optional[dict], ordered: bool,
                   entry_leaf: Optional[List[Optional[int]]], like: Any, layout: Any,
                   where: str) -> List[int]:
  """The params leaf of each torch parameter, proven (`optax_nadam.interop._pairing`) or refused.

  Args:
    params: `read_optimizer`'s.
    model: the model state dict (name -> Entry) beside the optimizer, or None.
    ordered: the model dict is ``module.state_dict()``'s (registration order).
    entry_leaf: `match_model`'s leaf per model entry (for leaves of `like`).
    like: the trainable params tree (frozen leaves included: they meet no parameter).
    layout: the layout.
    where: the optimizer state dict, for messages.
  """
  leaves = pairing.like_leaves(like)
  n = len(leaves.paths)
  shapes = [tuple(np.shape(p.slot.m)) if p.slot.m is not None else None for p in params]
  by_name = None
  if all(p.name is not None for p in params):
    by_name = name_leaves([p.name for p in params], shapes, leaves, layout,
                           _via_model(model, entry_leaf, leaves))
    if by_name is not None and None in by_name:
      p = params[by_name.index(None)]
      raise ValueError(f"{p.slot.where}: its name {p.name!r} names no params leaf "
                       f"({leaves.names[:8]}...); pass a layout or like tree with the "
                       "model's names (e.g. layout=interop.torch_to_flax).")
  groups = len({p.group for p in params})
  proven, why = None, ""
  if by_name is None:
    entries = [] if model is None else pairing.param_entries(
        list(model), [e.tie for e in model.values()])
    names = list(model or {})
    if not any(p.slot.m is not None for p in params) and groups == 1 and len(params) == n:
      proven = list(range(n))  # nothing stepped: every pairing gives the same fresh state
    elif groups > 1:
      why = (f"it has {groups} param groups, which list their parameters in the order they "
             "were built, not the model's")
    elif model is None:
      if leaves.ordered and len(params) == n:
        proven = list(range(n))  # params is a list: the caller's order, the optimizer's
      why = ("no model state dict comes with it and params is a dict (jax orders its leaves "
             "by sorted key, which is not the optimizer's order)" if not leaves.ordered
             else f"no model state dict comes with it and params has {n} leaves for "
             f"{len(params)} parameters")
    elif not ordered:
      why = ("its model's names are sorted (safetensors, an index file) or in an order no "
             "module.state_dict() proves (a plain dict: torch keeps _metadata on its own)")
    elif len(entries) != len(params):
      why = (f"it holds {len(params)} parameters and the model {len(entries)} "
             f"({[names[k] for k in entries][:6]}...): the "
             + (f"{len(entries) - len(params)} left out (frozen, requires_grad=False?)"
                if len(entries) > len(params) else "extra ones")
             + " are not named")
    elif entry_leaf is None or any(
        s is not None and s != model[names[k]].shape for s, k in zip(shapes, entries)):
      why = ("its parameters are not the model state dict's parameters in order (other "
             "shapes)")
    else:
      proven = [entry_leaf[k] for k in entries]
      if None in proven:
        proven, why = None, "some of the model's parameters fill no params leaf"
  by_position = any(p.name is None for p in params)
  return pairing.pair(by_name, proven, shapes, leaves, range(n), layout,
                      lambda: _refusal(params, why, where, by_position))


def slots_by_leaf(ck: Checkpoint, params: Any, layout: Any, param_names: Any,
                  entry_leaf: Optional[List[Optional[int]]], where: str):
  """The torch optimizer's slots and hyperparameters per params leaf, laid out.

  Leaves no torch parameter meets (frozen: left out of the optimizer) get None.
  """
  tparams = read_optimizer(ck.optimizer, where, param_names)
  if (callable(getattr(layout, "leaf_name", None)) and ck.model is None
      and any(p.name is None for p in tparams)):
    raise ValueError(
        f"layout {layout!r} matches by name, but {ck.optimizer_where} comes without the "
        "model's state dict and its param groups hold no param_names, so its parameters "
        "have no names. Pass the checkpoint (or file) holding both, param_names=, or a "
        "layout without leaf_name (e.g. torch_linear_to_flax) to match by order.")
  paths = param_paths(params)
  if len(tparams) > len(paths):
    raise ValueError(f"{ck.optimizer_where} has slots for {len(tparams)} variables but params "
                     f"has {len(paths)} leaves ({paths[:5]}...); each torch parameter needs "
                     "a leaf of its own.")
  leaf_of = pair_optimizer(tparams, ck.model, ck.ordered, entry_leaf, params, layout,
                           ck.optimizer_where)
  slots: List[Optional[PeerSlot]] = [None] * len(paths)
  hypers: List[Optional[PeerHyperparams]] = [None] * len(paths)
  for p, i in zip(tparams, leaf_of):
    slot = p.slot
    if layout is not None and slot.count is not None:
      slot = slot._replace(m=np.asarray(layout(paths[i], slot.m)),
                           v=np.asarray(layout(paths[i], slot.v)))
    slots[i], hypers[i] = slot, p.hyper
  return slots, hypers


def entry_leaf(ck: Checkpoint, params: Any, layout: Any) -> Optional[List[Optional[int]]]:
  """Each model entry's params leaf, or None when the model dict does not fit params."""
  if ck.model is None:
    return None
  try:
    return pairing.match_model(list(ck.model), [e.shape for e in ck.model.values()],
                               [e.tie for e in ck.model.values()], ck.ordered, params, layout,
                               ck.model_where)
  except ValueError:
    return None  # the optimizer is paired without the model's order (names or shapes)


def torch_tx(hypers: Sequence[Optional[PeerHyperparams]], slots: Sequence[Optional[PeerSlot]],
             like: Any) -> optax.GradientTransformation:
  """One tx taking torch's next step on every leaf.

  torch keeps a step count and a mu-product per parameter, our nadam one per
  instance: leaves that differ in hyperparameters or in (step, mu-product)
  (a parameter that missed steps, or never had a gradient) get a nadam each,
  under one `optax.multi_transform`. Leaves torch does not train (``None``:
  frozen) are left unchanged (``optax.set_to_zero``).
  """
  import jax

  keys = [None if h is None else (h, 0 if s.count is None else s.count,
                                  1.0 if s.count is None else s.mu_product)
          for h, s in zip(hypers, slots)]
  distinct = list(dict.fromkeys(k for k in keys if k is not None))
  stated = list(dict.fromkeys(k[0] for k in distinct))
  if len(distinct) == 1 and None not in keys:
    return printable(peer_tx(distinct[0][0]), stated)
  labels = ["frozen" if k is None else f"group{distinct.index(k)}" for k in keys]
  transforms = {f"group{j}": peer_tx(k[0]) for j, k in enumerate(distinct)}
  if None in keys:
    transforms["frozen"] = optax.set_to_zero()
  tx = optax.multi_transform(transforms, jax.tree.unflatten(jax.tree.structure(like), labels))
  return printable(tx, stated)
