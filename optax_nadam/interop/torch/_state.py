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
      raise ValueError(f"{name} has no {key!r}: not a torch.optim.NAdam state dict.")
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


def _names(groups: Sequence[Mapping], param_names: Any) -> List[Optional[List[str]]]:
  """Per group the parameter names: the caller's, else the ones torch wrote, else None."""
  sizes = [len(g["params"]) for g in groups]
  if param_names is None:
    out = []
    for g, group in enumerate(groups):
      names = group.get("param_names")
      if names is not None and (not isinstance(names, (list, tuple)) or len(names) != sizes[g]
                                or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"param_groups[{g}]['param_names'] is not {sizes[g]} strings.")
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
  names = _names(groups, param_names)
  out, seen = [], set()
  for g, group in enumerate(groups):
    for k, pid in enumerate(group["params"]):
      key = pid if pid in states else str(pid)  # DCP writes the state keys as strings
      seen.add(key)
      name = None if names[g] is None else names[g][k]
      where = (f"{prefix}torch parameter {len(out)} (param_groups[{g}], id {pid}"
               f"{', ' + name if name else ''})")
      out.append(TorchParam(g, name, _slot(states.get(key), where, hypers[g]), hypers[g]))
  stray = [k for k in states if k not in seen]
  if stray:
    raise ValueError(f"state_dict['state'] has entries {stray[:5]} for no parameter of any group.")
  return out


def _refuse(params: Sequence[TorchParam], why: str, where: str) -> ValueError:
  shapes = [None if p.slot.m is None else tuple(np.shape(p.slot.m)) for p in params]
  equal = {s: [i for i, t in enumerate(shapes) if t == s] for s in shapes if s is not None}
  equal = {s: ix for s, ix in equal.items() if len(ix) > 1}
  detail = (" and equal shapes leave more than one assignment (" + "; ".join(
      f"{s} at torch parameters {ix[:6]}" for s, ix in list(equal.items())[:3]) + ")"
      if equal else "")
  return ValueError(
      f"{where}: which params leaf each of the optimizer's {len(params)} parameters belongs "
      f"to cannot be proven: {why}{detail}. torch keys its optimizer state by position in the "
      "param groups, not by name. Give the names: build the optimizer from "
      "model.named_parameters() (torch then writes param_names into each param group), or "
      "pass param_names= (one list per param group, each in the group's order, e.g. "
      "[[n for n, p in model.named_parameters() if n in group0], ...]).")


def _by_names(params: List[TorchParam], model: Optional[dict],
              entry_leaf: Optional[List[Optional[int]]], like: Any,
              layout: Any) -> Optional[List[int]]:
  """Each parameter's leaf by its name; None when like's names are not the model's at all."""
  leaves = pairing.like_leaves(like)
  index = {n: i for i, n in enumerate(leaves.names)}
  names = pairing.strip_prefixes([p.name for p in params], leaves)
  model_names = list(model or {})
  entry_of = dict(zip(pairing.strip_prefixes(model_names, leaves), model_names))
  out: List[Optional[int]] = []
  for p, name in zip(params, names):
    entry = model.get(entry_of.get(name)) if model else None
    shape = np.shape(p.slot.m) if p.slot.m is not None else (entry.shape if entry else ())
    leaf = index.get(pairing.torch_name(name, tuple(shape), layout)[0])
    if leaf is None and entry is not None and entry.tie is not None and entry_leaf is not None:
      tied = [entry_leaf[k] for k, e in enumerate(model.values())
              if e.tie == entry.tie and entry_leaf[k] is not None]
      leaf = tied[0] if tied else None
    out.append(leaf)
  if all(i is None for i in out) and not callable(getattr(layout, "leaf_name", None)):
    return None  # e.g. a list: pair as if torch had written no names
  for p, i in zip(params, out):
    if i is None:
      raise ValueError(f"{p.slot.where}: its name {p.name!r} names no params leaf "
                       f"({leaves.names[:8]}...); pass a layout or like tree with the "
                       "model's names (e.g. layout=interop.torch_to_flax).")
  return out


def pair_optimizer(params: List[TorchParam], model: Optional[dict], ordered: bool,
                   entry_leaf: Optional[List[Optional[int]]], like: Any, layout: Any,
                   where: str) -> List[int]:
  """The params leaf of each torch parameter, proven (names, torch's order, shapes) or refused.

  Args:
    params: `read_optimizer`'s.
    model: the model state dict (name -> Entry) beside the optimizer, or None.
    ordered: the model dict is in registration order.
    entry_leaf: `match_model`'s leaf per model entry (for leaves of `like`).
    like: the trainable params tree.
    layout: the layout.
    where: the optimizer state dict, for messages.
  """
  n_leaves = len(_tree.leaf_paths(like))
  stepped = [p for p in params if p.slot.m is not None]
  if not stepped or len(params) != n_leaves:
    return list(range(len(params)))  # nothing to pair, or a count mismatch (named later)
  if all(p.name is not None for p in params):
    out = _by_names(params, model, entry_leaf, like, layout)
    if out is not None:
      return out
  groups = len({p.group for p in params})
  if groups == 1 and model is not None and ordered and entry_leaf is not None:
    names = list(model)
    entries = pairing.param_entries(names, [e.tie for e in model.values()])
    if len(entries) == len(params) and all(
        p.slot.m is None or tuple(np.shape(p.slot.m)) == model[names[k]].shape
        for p, k in zip(params, entries)):
      return [entry_leaf[k] for k in entries]
  if groups == 1 and model is None:
    return list(range(len(params)))  # the caller's params are in the optimizer's order
  if len(params) == n_leaves:
    shapes = [tuple(np.shape(p.slot.m)) if p.slot.m is not None else None for p in params]
    if None not in shapes:
      target = pairing.unique_shapes(shapes, like, layout)
      if target is not None:
        return target
  if groups > 1:
    why = (f"it has {groups} param groups, and only one group over all the parameters "
           "follows the model's order")
  elif model is None:
    why = "no model state dict comes with it"
  elif not ordered:
    why = ("its model's names are sorted (safetensors, an index file), not in "
           "model.parameters() order")
  else:
    why = ("its parameters are not the model state dict's parameters in order (other counts "
           "or shapes)")
  raise _refuse(params, why, where)


def slots_by_leaf(ck: Checkpoint, params: Any, layout: Any, param_names: Any,
                   entry_leaf: Optional[List[Optional[int]]], where: str):
  """The torch optimizer's slots and hyperparameters in params-leaf order, laid out."""
  tparams = read_optimizer(ck.optimizer, where, param_names)
  if (callable(getattr(layout, "leaf_name", None)) and ck.model is None
      and any(p.name is None for p in tparams)):
    raise ValueError(
        f"layout {layout!r} matches by name, but {ck.optimizer_where} comes without the "
        "model's state dict and its param groups hold no param_names, so its parameters "
        "have no names. Pass the checkpoint (or file) holding both, param_names=, or a "
        "layout without leaf_name (e.g. torch_linear_to_flax) to match by order.")
  leaf_of = pair_optimizer(tparams, ck.model, ck.ordered, entry_leaf, params,
                                        layout, ck.optimizer_where)
  paths = param_paths(params)
  slots = [p.slot for p in tparams]
  hypers = [p.hyper for p in tparams]
  if sorted(leaf_of) != list(range(len(paths))):
    if len(set(leaf_of)) != len(leaf_of):
      twice = sorted({paths[i] for i in leaf_of if leaf_of.count(i) > 1})
      raise ValueError(f"{ck.optimizer_where}: params leaves {twice[:5]} would get the slots "
                       "of several torch parameters.")
    return slots, hypers  # a count mismatch: build_state names it
  order = [0] * len(paths)
  for j, i in enumerate(leaf_of):
    order[i] = j
  slots = [slots[j] for j in order]
  hypers = [hypers[j] for j in order]
  if layout is not None:
    slots = [s if s.count is None else s._replace(m=np.asarray(layout(p, s.m)),
                                                  v=np.asarray(layout(p, s.v)))
             for p, s in zip(paths, slots)]
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


def torch_tx(hypers: Sequence[PeerHyperparams], like: Any) -> optax.GradientTransformation:
  """One tx for all leaves (``hypers[i]`` for leaf i): `optax.multi_transform` if they differ."""
  distinct = list(dict.fromkeys(hypers))
  if len(distinct) == 1:
    return printable(peer_tx(distinct[0]), distinct)
  labels = [f"group{distinct.index(h)}" for h in hypers]
  import jax

  tx = optax.multi_transform({f"group{k}": peer_tx(h) for k, h in enumerate(distinct)},
                             jax.tree.unflatten(jax.tree.structure(like), labels))
  return printable(tx, distinct)
