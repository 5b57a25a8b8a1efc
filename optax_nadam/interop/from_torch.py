"""torch.optim.NAdam <-> optax_nadam state (public names in `optax_nadam.interop`)."""

import sys
import warnings
from typing import Any, List, Mapping

import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam.interop.build import (
  PeerSlot,
  build_state,
  param_paths,
  read_state,
  to_array,
  to_scalar,
)

_TORCH_STATE_KEYS = ("step", "mu_product", "exp_avg", "exp_avg_sq")


def _torch_state_dict(optimizer_or_state_dict: Any) -> Mapping:
  if isinstance(optimizer_or_state_dict, Mapping):
    return optimizer_or_state_dict
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(optimizer_or_state_dict, torch.optim.Optimizer):
    if not isinstance(optimizer_or_state_dict, torch.optim.NAdam):
      raise TypeError(
          f"optimizer is a {type(optimizer_or_state_dict).__name__}; state_from_torch "
          "reads torch.optim.NAdam (its momentum schedule and mu_product)."
      )
    return optimizer_or_state_dict.state_dict()
  raise TypeError(
      "optimizer_or_state_dict must be a torch.optim.NAdam or its state_dict(), got "
      f"{type(optimizer_or_state_dict).__name__}."
  )


def _torch_groups(sd: Mapping) -> List[Mapping]:
  for key in ("state", "param_groups"):
    if key not in sd:
      raise ValueError(f"The torch state dict has no {key!r} key (keys: {sorted(sd)}).")
  groups = sd["param_groups"]
  if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
    raise TypeError("state_dict['param_groups'] must be a list of dicts.")
  if not isinstance(sd["state"], Mapping):
    raise TypeError("state_dict['state'] must be a dict.")
  for g, group in enumerate(groups):
    for key in ("params", "betas", "momentum_decay"):
      if key not in group:
        raise ValueError(
            f"param_groups[{g}] has no {key!r}: not a torch.optim.NAdam state dict."
        )
    if group.get("maximize", False):
      warnings.warn(
          f"param_groups[{g}] has maximize=True: torch NAdam's moments are of the "
          "negated gradient, so tx must negate gradients before scale_by_nadam.",
          stacklevel=3,
      )
  return list(groups)


def state_from_torch(
    optimizer_or_state_dict: Any,
    tx: optax.GradientTransformation,
    params: optax.Params,
    *,
    sync_schedules: bool = True,
    check_schedule: bool = True,
) -> optax.OptState:
  """Builds ``tx.init(params)`` filled with the state of a `torch.optim.NAdam`.

  torch keeps a ``step``, a ``mu_product`` and the moments ``exp_avg`` /
  ``exp_avg_sq`` per parameter; a `ScaleByNadamState` has one step count and
  one mu-product. The per-parameter values must therefore agree (they do when
  every parameter got a gradient on every step); a parameter torch never
  stepped (no state) is accepted only if the others are at step 0 too. Tensors
  are copied: torch's later in-place steps do not reach the imported state.

  torch's parameters, flattened over ``param_groups`` in order, are matched one
  to one with ``jax.tree.leaves(params)``. Several ``scale_by_nadam`` on
  disjoint parameters (``optax.multi_transform``, e.g. one per torch param
  group) are filled each from its own parameters.

  Weight decay is a hyperparameter, not state: for torch's default (coupled)
  ``weight_decay=wd`` use ``optax.chain(optax.add_decayed_weights(wd),
  nadam(lr, eps=1e-8))``; for ``decoupled_weight_decay=True`` use
  ``nadamw(lr, eps=1e-8, weight_decay=wd)``. torch's eps default is 1e-8.

  Args:
    optimizer_or_state_dict: a `torch.optim.NAdam`, or its ``state_dict()`` (a
      dict of tensors, numpy arrays and numbers only; nothing is unpickled).
    tx: the optax transformation to continue with: `optax_nadam.nadam`,
      `nadamw`, `optax_nadam.keras.Nadam`, or any chain / wrapper holding
      `scale_by_nadam` (``optax.inject_hyperparams``, clipping, ...).
    params: the params tree, leaves in the order of torch's parameters.
    sync_schedules: also set the step count of learning-rate schedules and
      ``inject_hyperparams`` in tx's state to the imported count.
    check_schedule: verify that tx's next momentum coefficient equals torch's
      (same betas[0] and momentum_decay) with one probe update on zeros.

  Returns:
    A state with the structure of ``tx.init(params)``.

  Raises:
    TypeError: not a NAdam / state dict, or a value of an unsupported type.
    ValueError: wrong number of parameters, a shape / dtype / value that does
      not fit (NaN, negative second moment, negative or fractional step,
      mu_product outside [0, 1]), steps or mu-products that disagree between
      parameters, or a momentum schedule that differs from tx's. The message
      names the torch parameter index and the params leaf path.
  """
  sd = _torch_state_dict(optimizer_or_state_dict)
  groups = _torch_groups(sd)
  states = sd["state"]
  slots: List[PeerSlot] = []
  seen = set()
  for g, group in enumerate(groups):
    b1 = to_scalar(group["betas"][0], f"param_groups[{g}]['betas'][0]")
    psi = to_scalar(group["momentum_decay"], f"param_groups[{g}]['momentum_decay']")
    for pid in group["params"]:
      where = f"torch parameter {len(slots)} (param_groups[{g}], id {pid})"
      seen.add(pid)
      entry = states.get(pid)
      if not entry:
        slots.append(PeerSlot(where, None, None, None, None, b1, psi))
        continue
      if not isinstance(entry, Mapping):
        raise TypeError(f"{where}: its state is a {type(entry).__name__}, not a dict.")
      missing = [k for k in _TORCH_STATE_KEYS if k not in entry]
      extra = [k for k in entry if k not in _TORCH_STATE_KEYS]
      if missing or extra:
        raise ValueError(
            f"{where}: state keys {sorted(map(str, entry))}; NAdam has {list(_TORCH_STATE_KEYS)}"
            f" (missing {missing}, unexpected {extra})."
        )
      step = to_scalar(entry["step"], f"{where} step")
      if step < 0 or step != int(step):
        raise ValueError(f"{where}: step is {step}; a step count is an integer >= 0.")
      mu_product = to_scalar(entry["mu_product"], f"{where} mu_product")
      _tree.check_mu_product(mu_product, f"{where}: mu_product")
      slots.append(PeerSlot(
          where, int(step), mu_product, to_array(entry["exp_avg"], f"{where} exp_avg"),
          to_array(entry["exp_avg_sq"], f"{where} exp_avg_sq"), b1, psi))
  stray = [k for k in states if k not in seen]
  if stray:
    raise ValueError(f"state_dict['state'] has entries {stray[:5]} for no parameter of any group.")
  return build_state(tx, params, slots, sync_schedules=sync_schedules,
                     check_schedule=check_schedule)


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
