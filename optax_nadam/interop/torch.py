"""torch.optim.NAdam state and torch model weights <-> optax_nadam (live objects, dicts, files).

See `optax_nadam.interop`.
"""

import sys
from typing import Any, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam.interop import layout as _layout
from optax_nadam.interop._arrays import to_scalar
from optax_nadam.interop._check import PeerHyperparams
from optax_nadam.interop._formats import torch_files
from optax_nadam.interop._nodes import param_paths, read_state
from optax_nadam.interop._state import PeerSlot, build_state

_TORCH_STATE_KEYS = ("step", "mu_product", "exp_avg", "exp_avg_sq")


def _scalar(x: Any, where: str) -> float:
  return to_scalar(torch_files.to_numpy(x, where), where)


def _optimizer_state(source: Any, key: Optional[str]) -> Tuple[Mapping, str, Any]:
  """``(optimizer state dict, where, the checkpoint it came from)``."""
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(source, torch.optim.Optimizer):
    if not isinstance(source, torch.optim.NAdam):
      raise TypeError(
          f"optimizer is a {type(source).__name__}; state_from_torch reads "
          "torch.optim.NAdam (its momentum schedule and mu_product)."
      )
    return source.state_dict(), "the torch optimizer", None
  obj, name = torch_files.open_source(source)
  if not isinstance(obj, Mapping):
    raise TypeError(
        "optimizer_or_state_dict must be a torch.optim.NAdam or its state_dict(), a "
        f"checkpoint dict holding it or a torch.save file path, got {type(obj).__name__}."
    )
  if key is None and "state" in obj and "param_groups" not in obj:
    raise ValueError(f"The torch state dict has no 'param_groups' key (keys: {sorted(obj)}).")
  sd, where = torch_files.optimizer_dict(obj, key, name)
  return sd, where, obj


def _group_hyperparams(group: Mapping, name: str) -> Tuple[PeerHyperparams, float, float]:
  """One param group's hyperparameters, and its b1 and psi (`name`: the group, quoted)."""
  for key in ("params", "betas", "momentum_decay"):
    if key not in group:
      raise ValueError(f"{name} has no {key!r}: not a torch.optim.NAdam state dict.")
  betas = group["betas"]
  if not isinstance(betas, (list, tuple)) or len(betas) != 2:
    raise ValueError(f"{name}['betas'] is {betas!r}; NAdam's betas are a pair (beta1, beta2).")
  b1, b2 = (_scalar(b, f"{name}['betas'][{k}]") for k, b in enumerate(betas))
  psi = _scalar(group["momentum_decay"], f"{name}['momentum_decay']")
  hyper = PeerHyperparams(
      learning_rate=_scalar(group.get("lr", 0.0), f"{name}['lr']"), b1=b1, b2=b2,
      eps=_scalar(group.get("eps", 1e-8), f"{name}['eps']"), psi=psi,
      weight_decay=_scalar(group.get("weight_decay", 0.0), f"{name}['weight_decay']"),
      decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
      maximize=bool(group.get("maximize", False)))
  return hyper, b1, psi


def _slot(entry: Any, where: str, b1: float, psi: float) -> PeerSlot:
  """One parameter's NAdam state entry, validated, as a `PeerSlot`."""
  if not entry:
    return PeerSlot(where, None, None, None, None, b1, psi)
  if not isinstance(entry, Mapping):
    raise TypeError(f"{where}: its state is a {type(entry).__name__}, not a dict.")
  missing = [k for k in _TORCH_STATE_KEYS if k not in entry]
  extra = [k for k in entry if k not in _TORCH_STATE_KEYS]
  if missing or extra:
    hint = " (torch Adam keeps no mu_product: this is not a NAdam state)" if (
        missing == ["mu_product"] and not extra) else ""
    raise ValueError(
        f"{where}: state keys {sorted(map(str, entry))}; NAdam has {list(_TORCH_STATE_KEYS)}"
        f" (missing {missing}, unexpected {extra}){hint}."
    )
  step = _scalar(entry["step"], f"{where} step")
  if step < 0 or step != int(step):
    raise ValueError(f"{where}: step is {step}; a step count is an integer >= 0.")
  mu_product = _scalar(entry["mu_product"], f"{where} mu_product")
  _tree.check_mu_product(mu_product, f"{where}: mu_product")
  return PeerSlot(where, int(step), mu_product,
                  torch_files.to_numpy(entry["exp_avg"], f"{where} exp_avg"),
                  torch_files.to_numpy(entry["exp_avg_sq"], f"{where} exp_avg_sq"), b1, psi)


def _read_slots(sd: Mapping, prefix: str) -> Tuple[List[PeerSlot], List[PeerHyperparams]]:
  """Per torch parameter (``param_groups`` order) its slot and hyperparameters."""
  for key in ("state", "param_groups"):
    if key not in sd:
      raise ValueError(f"The torch state dict has no {key!r} key (keys: {sorted(sd)}).")
  groups, states = sd["param_groups"], sd["state"]
  if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
    raise TypeError("state_dict['param_groups'] must be a list of dicts.")
  if not isinstance(states, Mapping):
    raise TypeError("state_dict['state'] must be a dict.")
  slots, hypers, seen = [], [], set()
  for g, group in enumerate(groups):
    hyper, b1, psi = _group_hyperparams(group, f"{prefix}param_groups[{g}]")
    for pid in group["params"]:
      seen.add(pid)
      name = f"{prefix}torch parameter {len(slots)} (param_groups[{g}], id {pid})"
      slots.append(_slot(states.get(pid), name, b1, psi))
      hypers.append(hyper)
  stray = [k for k in states if k not in seen]
  if stray:
    raise ValueError(f"state_dict['state'] has entries {stray[:5]} for no parameter of any group.")
  return slots, hypers


def _model_names(checkpoint: Any) -> Optional[List[Tuple[str, Tuple[int, ...]]]]:
  """``[(name, shape), ...]`` of the model state dict beside the optimizer's, if any."""
  if not isinstance(checkpoint, Mapping):
    return None
  try:
    model, _ = torch_files.model_dict(checkpoint, None, "")
  except ValueError:
    return None
  return [(k, tuple(np.shape(v))) for k, v in model.items()]


def _arrange(slots, hypers, params, layout, names, where):
  """Slots and hyperparameters in params-leaf order, moments in the params' layout."""
  order = list(range(len(slots)))
  if _layout.by_name(layout) and names is None:
    raise ValueError(
        f"layout {layout!r} matches by name, but {where} comes without the model's state "
        "dict, so its parameters have no names. Pass the checkpoint (or file) holding both "
        "(e.g. {'model': model.state_dict(), 'optimizer': opt.state_dict()}), or a layout "
        "without leaf_name (e.g. torch_linear_to_flax) to match by order."
    )
  if _layout.by_name(layout):
    kept = [(n, s) for n, s in names if layout.leaf_name(n, s) is not None]
    if len(kept) != len(slots):
      raise ValueError(
          f"{where} has {len(slots)} parameters but its model state dict has {len(kept)} "
          "params entries (after leaving out the ones the layout skips); the i-th parameter "
          "is the i-th entry (the optimizer must be built on model.parameters())."
      )
    target = _layout.match([n for n, _ in kept], [s for _, s in kept], params, layout, where)
    order = [0] * len(slots)
    for j, i in enumerate(target):
      order[i] = j
    slots = [s._replace(where=f"{s.where} ({kept[j][0]})") for j, s in enumerate(slots)]
  if len(slots) != len(param_paths(params)):
    return slots, hypers  # build_state names the count mismatch
  slots = [slots[j] for j in order]
  hypers = [hypers[j] for j in order]
  if layout is not None:
    paths = param_paths(params)
    slots = [s if s.count is None else s._replace(m=np.asarray(layout(p, s.m)),
                                                  v=np.asarray(layout(p, s.v)))
             for p, s in zip(paths, slots)]
  return slots, hypers


def state_from_torch(
    optimizer_or_state_dict: Any,
    tx: optax.GradientTransformation,
    params: optax.Params,
    *,
    key: Optional[str] = None,
    layout: Optional[_layout.Layout] = None,
    sync_schedules: bool = True,
    check_schedule: bool = True,
    check_hyperparams: Optional[bool] = None,
) -> optax.OptState:
  """Builds ``tx.init(params)`` filled with the state of a `torch.optim.NAdam`.

  torch keeps a ``step``, a ``mu_product`` and the moments ``exp_avg`` /
  ``exp_avg_sq`` per parameter; a `ScaleByNadamState` has one step count and
  one mu-product. The per-parameter values must therefore agree (they do when
  every parameter got a gradient on every step); a parameter torch never
  stepped (no state) is accepted only if the others are at step 0 too. Tensors
  are copied: torch's later in-place steps do not reach the imported state.

  torch's parameters, flattened over ``param_groups`` in order, are matched one
  to one with ``jax.tree.leaves(params)``; with a naming `layout` (e.g.
  `torch_to_flax`) and a checkpoint that holds the model's state dict too,
  parameter i is the model's i-th params entry, matched to params by name.
  Several ``scale_by_nadam`` on disjoint parameters (``optax.multi_transform``,
  e.g. one per torch param group) are filled each from its own parameters.

  The whole next step is checked (`check_hyperparams`): torch's ``lr``,
  ``betas``, ``eps``, ``weight_decay``, ``decoupled_weight_decay`` and
  ``maximize`` must be tx's. For torch's coupled ``weight_decay=wd`` use
  ``optax.chain(optax.add_decayed_weights(wd), nadam(lr, eps=1e-8))``; for
  ``decoupled_weight_decay=True`` ``nadamw(lr, eps=1e-8, weight_decay=wd)``;
  for ``maximize=True`` ``optax.chain(optax.scale(-1.0), nadam(...))``.
  torch's eps default is 1e-8 (ours 1e-7).

  Args:
    optimizer_or_state_dict: a `torch.optim.NAdam`; its ``state_dict()``; a
      checkpoint dict holding it under ``optimizer`` / ``optim`` /
      ``optimizer_state_dict`` (or `key`); or the path (str, os.PathLike) of
      a file `torch.save` wrote, read with ``weights_only=True`` on CPU.
      Only tensors, numpy arrays and numbers are read; nothing is unpickled.
    tx: the optax transformation to continue with: `optax_nadam.nadam`,
      `nadamw`, `optax_nadam.keras.Nadam`, or any chain / wrapper holding
      `scale_by_nadam` (``optax.inject_hyperparams``, clipping, ...).
    params: the params tree (e.g. from `params_from_torch`).
    key: the checkpoint entry holding the optimizer state dict.
    layout: ``(params_leaf_path, array) -> array`` applied to every moment,
      e.g. `torch_to_flax` (see `optax_nadam.interop.layout`).
    sync_schedules: also set the step count of learning-rate schedules and
      ``inject_hyperparams`` in tx's state to the imported count.
    check_schedule: verify that tx's next momentum coefficient equals torch's
      (same betas[0] and momentum_decay) with one probe update on zeros.
    check_hyperparams: verify tx's whole next step against torch's
      hyperparameters (`optax_nadam.interop._check`); None (default) means
      `check_schedule`. Pass False to change a hyperparameter on purpose
      (e.g. a new learning rate after resuming).

  Returns:
    A state with the structure of ``tx.init(params)``.

  Raises:
    FileNotFoundError: `optimizer_or_state_dict` is a path that does not exist.
    TypeError: not a NAdam / state dict, or a value of an unsupported type.
    ValueError: an unreadable or unsafe file; not a NAdam state (e.g. Adam's,
      which has no mu_product); wrong number of parameters, a shape / dtype /
      value that does not fit (NaN, negative second moment, negative or
      fractional step, mu_product outside [0, 1]), steps or mu-products that
      disagree between parameters; a momentum schedule or another
      hyperparameter that differs from tx's. The message names the file, the
      torch parameter and the params leaf path.
  """
  sd, where, checkpoint = _optimizer_state(optimizer_or_state_dict, key)
  prefix = f"{where}: " if torch_files.is_path(optimizer_or_state_dict) else ""
  slots, hypers = _read_slots(sd, prefix)
  slots, hypers = _arrange(slots, hypers, params, layout, _model_names(checkpoint), where)
  return build_state(tx, params, slots, sync_schedules=sync_schedules,
                     check_schedule=check_schedule, hyperparams=hypers,
                     check_hyperparams=check_hyperparams)


def state_to_torch(state: optax.OptState, params: optax.Params, optimizer: Any) -> None:
  """Loads our state into a `torch.optim.NAdam` (via ``load_state_dict``).

  The optimizer's parameters, flattened over ``param_groups``, are matched one
  to one with ``jax.tree.leaves(params)``. Its hyperparameters are left as
  they are: build it like tx (``eps=1e-7`` for our default, ``momentum_decay``
  as tx's).

  Args:
    state: a state of a tx containing `scale_by_nadam`, for `params`.
    params: the params tree the state belongs to.
    optimizer: the `torch.optim.NAdam` to load into (modified in place).

  Returns:
    None.

  Raises:
    TypeError: `optimizer` is not a torch NAdam.
    ValueError: parameter count or a shape differs (named).
  """
  torch = sys.modules.get("torch")
  if torch is None or not isinstance(optimizer, torch.optim.NAdam):
    raise TypeError(f"optimizer must be a torch.optim.NAdam, got {type(optimizer).__name__}.")
  values = read_state(state, params)
  paths = param_paths(params)
  torch_params = [p for group in optimizer.param_groups for p in group["params"]]
  if len(torch_params) != len(values):
    raise ValueError(
        f"The torch optimizer has {len(torch_params)} parameters but params has "
        f"{len(values)} leaves; they are matched one to one in order."
    )
  sd = optimizer.state_dict()
  ids = [pid for group in sd["param_groups"] for pid in group["params"]]
  new_state = {}
  for i, (pid, p, (count, mu_product, m, v)) in enumerate(zip(ids, torch_params, values)):
    if tuple(p.shape) != m.shape:
      raise ValueError(
          f"torch parameter {i} has shape {tuple(p.shape)} but params leaf {paths[i]} has "
          f"{m.shape}."
      )
    new_state[pid] = {
        "step": torch.tensor(float(count), dtype=torch.float32),
        # float32, or float64 for float64 params (torch casts it to the param's dtype).
        "mu_product": torch.from_numpy(np.array(mu_product)),
        "exp_avg": torch.from_numpy(m.copy()),
        "exp_avg_sq": torch.from_numpy(v.copy()),
    }
  optimizer.load_state_dict({"state": new_state, "param_groups": sd["param_groups"]})

def _as_param(value: Any, like: Any, where: str) -> jax.Array:
  """A validated copy of one weight, cast to `like`'s dtype and placement."""
  if np.shape(value) != np.shape(like):
    raise ValueError(f"{where} has shape {np.shape(value)} (after the layout); the params "
                     f"leaf has {tuple(np.shape(like))}.")
  kind = lambda d: "f" if jnp.issubdtype(d, jnp.floating) else (  # noqa: E731
      "c" if jnp.issubdtype(d, jnp.complexfloating) else "i")
  if kind(value.dtype) != kind(jnp.asarray(like).dtype) or kind(value.dtype) == "c":
    raise ValueError(f"{where} has dtype {value.dtype}; the params leaf has "
                     f"{jnp.asarray(like).dtype}.")
  cast = np.asarray(value).astype(jnp.asarray(like).dtype)
  finite_check = cast if cast.dtype == np.float64 else cast.astype(np.float32)  # bf16: no isfinite
  if kind(value.dtype) == "f" and not np.all(np.isfinite(finite_check)):
    raise ValueError(f"{where} holds NaN or Inf (after casting to {cast.dtype}).")
  sharding = getattr(like, "sharding", None)
  return jax.device_put(cast, sharding) if sharding is not None else jnp.asarray(cast)


def params_from_torch(
    source: Any,
    like: optax.Params,
    *,
    key: Optional[str] = None,
    layout: Optional[_layout.Layout] = None,
) -> optax.Params:
  """The weights of a torch model (state dict or checkpoint file) as a params tree.

  Matching is strict: by order (the state dict's i-th entry is
  ``jax.tree.leaves(like)[i]``), or by name when `layout` has a
  ``leaf_name`` method (`torch_to_flax`: ``fc1.weight`` -> ``['fc1']['kernel']``,
  batch-norm running statistics left out). Each weight goes through
  `layout`, then its shape must be the leaf's, its dtype castable to the
  leaf's (floating to floating) and its values finite.

  Args:
    source: a model ``state_dict()`` (name -> tensor, in its order), an
      ``nn.Module``, a checkpoint dict holding the state dict under ``model``
      / ``model_state_dict`` / ``state_dict`` (or `key`), or the path of a
      file `torch.save` wrote (read with ``weights_only=True`` on CPU).
    like: a params tree with the wanted structure, shapes and dtypes (e.g.
      the freshly initialized model's, ``nnx.state(model, nnx.Param)``).
    key: the checkpoint entry holding the model state dict.
    layout: ``(params_leaf_path, array) -> array`` applied to every weight
      (`torch_linear_to_flax`, `torch_to_flax`).

  Returns:
    A tree shaped like `like` holding copies of torch's weights.

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ValueError: an unreadable or unsafe file, no model state dict, a count,
      name, shape, dtype or value that does not fit. Messages name the file,
      the torch key (e.g. ``fc1.weight``) and the params leaf path.
  """
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(source, torch.nn.Module):
    source = source.state_dict()
  obj, name = torch_files.open_source(source)
  model, where = torch_files.model_dict(obj, key, name)
  names = list(model)
  arrays = [torch_files.to_numpy(model[n], f"{where}[{n!r}]") for n in names]
  target = _layout.match(names, [a.shape for a in arrays], like, layout, where)
  leaves, treedef = jax.tree.flatten(like)
  paths = param_paths(like)
  out: List[Any] = [None] * len(leaves)
  for n, a, i in zip(names, arrays, target):
    if i is None:
      continue
    value = np.asarray(layout(paths[i], a)) if layout is not None else a
    out[i] = _as_param(value, leaves[i], f"{where}: {n} (params leaf {paths[i]})")
  return jax.tree.unflatten(treedef, out)
