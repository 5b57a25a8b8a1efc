"""torch.optim.NAdam state and torch model weights <-> optax_nadam (live objects, dicts, files).

`resume_from_torch` reads a checkpoint once and returns the weights, the tx
built from the checkpoint's own hyperparameters and its filled state;
`params_from_torch` and `state_from_torch` do one part each (the latter for a
tx of your own, checked against torch's hyperparameters by probing its step).
Sources and layouts: `optax_nadam.interop.torch._sources`; which
weight and which optimizer slot fill which leaf: `optax_nadam.interop._pairing`
(proven by names, torch's order or shapes, or refused). See `optax_nadam.interop`.
"""

import sys
import warnings
from typing import Any, Optional, Tuple, Union

import numpy as np
import optax

from optax_nadam.interop import _pairing
from optax_nadam.interop import layout as _layout
from optax_nadam.interop._nodes import read_state
from optax_nadam.interop._state import build_state
from optax_nadam.interop.torch import _load
from optax_nadam.interop.torch import _params as _torch_params
from optax_nadam.interop.torch import _state as _torch_state
from optax_nadam.interop.torch._sources import open_checkpoint

Key = Union[None, str, int, Tuple[Union[None, str], Union[None, str, int]]]


def _opened(source: Any, key: Key, want_model: bool = True, want_optimizer: bool = True):
  ck = open_checkpoint(source, key, want_model=want_model, want_optimizer=want_optimizer)
  prefix = f"{ck.optimizer_where}: " if _load.is_path(source) else ""
  return ck, prefix


def resume_from_torch(
    source: Any,
    like: optax.Params,
    *,
    layout: Optional[_layout.Layout] = None,
    key: Key = None,
    param_names: Any = None,
) -> Tuple[optax.Params, optax.GradientTransformation, optax.OptState]:
  """A torch NAdam run's weights, its optimizer as an optax tx, and that tx's filled state.

  Reads `source` once. The tx is built from the checkpoint's hyperparameters,
  per torch param group: ``nadam(lr, b1, b2, eps, momentum_decay)`` with the
  group's current ``lr``, `nadamw` for ``decoupled_weight_decay``,
  ``optax.add_decayed_weights(wd)`` before it for torch's coupled
  ``weight_decay``, ``optax.scale(-1.0)`` for ``maximize``; one
  ``optax.multi_transform`` when groups differ. ``tx.update(grads, opt_state,
  params)`` then takes torch's next steps (for a Linen variables dict with
  ``batch_stats``, ``params["params"]``; for NNX see `nnx_optimizer`). A
  learning-rate schedule is not in the checkpoint: to attach one, build your
  tx with it and call `state_from_torch` (which sets the schedule's count).

  Weights and slots are paired with `like`'s leaves by name (the model's
  names, the optimizer's ``param_names``, DCP's parameter FQNs, or
  `param_names`), by an order torch proves, or by shapes that leave one
  assignment; otherwise a ValueError says how to give the names
  (docs/migration.md, "The pairing rule"). The one assumption: one param
  group saved without names, beside a ``module.state_dict()``, is
  ``NAdam(model.parameters())``, in registration order. Parameters left out
  of the optimizer (frozen, ``requires_grad=False``) are filled from the model
  and left unchanged by the tx (``optax.set_to_zero``); a parameter whose
  step count differs (it never had a gradient, or missed steps) gets a nadam
  of its own that continues from its own count, as torch's would.

  Args:
    source: a `torch.save` file or PyTorch Lightning ``.ckpt``; a checkpoint
      dict; a Hugging Face Trainer-style folder (``model.safetensors`` or
      ``pytorch_model.bin``, sharded with an ``*.index.json`` too, plus
      ``optimizer.pt``); a torch distributed checkpoint directory. DDP's
      ``module.``, ``torch.compile``'s ``_orig_mod.`` and a Lightning module's
      attribute prefix are understood; tied weights (two names, one tensor)
      fill one leaf.
    like: the params tree with the wanted structure, shapes and dtypes: e.g.
      Flax Linen ``variables`` (``batch_stats`` receive BatchNorm's running
      statistics), ``nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))``,
      or a list in ``model.parameters()`` order.
    layout: ``(params_leaf_path, array) -> array`` for every weight and
      moment; with ``leaf_name`` (`torch_to_flax`) it also names leaves.
    key: the checkpoint entry holding the optimizer state dict (an int picks
      one of Lightning's ``optimizer_states``), or a pair ``(model entry,
      optimizer entry)`` naming both (e.g. ``("model_state",
      "optimizer_state")``).
    param_names: the optimizer's parameter names, flat over its param groups
      or one list per group, when torch did not write ``param_names``.

  Returns:
    ``(params, tx, opt_state)``: `like` filled with the weights, the tx, and
    ``tx.init`` of the trainable params filled with torch's state.

  Warns:
    UserWarning: a param group's learning rate is 0 (a finished schedule).

  Raises:
    FileNotFoundError, IsADirectoryError: as named.
    TypeError: a source of another kind.
    ValueError: an unreadable or unsafe file (`FileFormatError`), a pairing
      that cannot be proven, a count, name, shape, dtype or value that does
      not fit; messages name the file, the torch key and the params leaf.
  """
  ck, prefix = _opened(source, key)
  params, target = _torch_params.read_params(ck, like, layout)
  train, kept = _torch_params.trainable(params)
  position = {f: j for j, f in enumerate(kept)}
  entry_leaf = [None if i is None else position.get(i) for i in target]
  slots, hypers = _torch_state.slots_by_leaf(ck, train, layout, param_names, entry_leaf, prefix)
  stopped = [g for g, group in enumerate(ck.optimizer["param_groups"])
             if _torch_state.group_hyperparams(group, ck.optimizer_where).learning_rate == 0.0]
  if stopped:
    warnings.warn(
        f"{ck.optimizer_where}: param group(s) {stopped} have learning rate 0 (a schedule "
        "that has reached its end, e.g. Hugging Face's linear decay), so the tx built from it "
        "does not move those weights. To train on, build your tx with the schedule you want "
        "and call state_from_torch(source, tx, params).", stacklevel=2)
  tx = _torch_state.torch_tx(hypers, slots, train)
  opt_state = build_state(tx, train, slots, sync_schedules=True, check_schedule=True,
                          hyperparams=hypers, check_hyperparams=False)
  return params, tx, opt_state


def state_from_torch(
    optimizer_or_state_dict: Any,
    tx: optax.GradientTransformation,
    params: optax.Params,
    *,
    key: Key = None,
    layout: Optional[_layout.Layout] = None,
    param_names: Any = None,
    sync_schedules: bool = True,
    check_schedule: bool = True,
    check_hyperparams: Optional[bool] = None,
) -> optax.OptState:
  """Builds ``tx.init(params)`` filled with the state of a `torch.optim.NAdam`.

  torch keeps a ``step``, a ``mu_product`` and the moments ``exp_avg`` /
  ``exp_avg_sq`` per parameter; a `ScaleByNadamState` has one step count and
  one mu-product. The parameters one ``scale_by_nadam`` holds must therefore
  agree (they do when every parameter got a gradient on every step); where
  they differ, give each count its own ``scale_by_nadam`` (``optax.
  multi_transform``; `resume_from_torch` builds that tx). Leaves the optimizer
  does not hold (frozen) must be left unchanged by tx (``optax.set_to_zero``
  under ``optax.multi_transform``). Tensors are copied: torch's later
  in-place steps do not reach the imported state.

  Each torch parameter is paired with a leaf of `params` under the pairing
  rule (as in `resume_from_torch`): by names, by torch's order (one param
  group beside a ``module.state_dict()``; without a model dict, `params` as
  a list in the optimizer's order), or by shapes that leave one assignment;
  otherwise a ValueError. A dict `params` never states an order (jax sorts
  its keys). Several ``scale_by_nadam`` on disjoint parameters are filled
  each from its own parameters.

  The whole next step is checked (`check_hyperparams`): tx's update is probed
  from states where each of torch's ``lr``, ``betas``, ``eps``,
  ``weight_decay``, ``decoupled_weight_decay`` and ``maximize`` moves the
  step, and a mismatch names the one that differs. For torch's coupled
  ``weight_decay=wd`` use ``optax.chain(optax.add_decayed_weights(wd),
  nadam(lr, eps=1e-8))``; for ``decoupled_weight_decay=True``
  ``nadamw(lr, eps=1e-8, weight_decay=wd)``; for ``maximize=True``
  ``optax.chain(optax.scale(-1.0), nadam(...))``. torch's eps default is 1e-8
  (ours 1e-7).

  Args:
    optimizer_or_state_dict: a `torch.optim.NAdam`; its ``state_dict()``; a
      checkpoint dict, file or folder (the sources of `resume_from_torch`).
      Only tensors, numpy arrays and numbers are read; nothing is unpickled.
    tx: the optax transformation to continue with: `optax_nadam.nadam`,
      `nadamw`, `optax_nadam.keras.Nadam`, or any chain / wrapper holding
      `scale_by_nadam` (``optax.inject_hyperparams``, clipping, ...).
    params: the trainable params tree (e.g. from `params_from_torch`).
    key: the checkpoint entry holding the optimizer state dict, or a pair
      ``(model entry, optimizer entry)``.
    layout: ``(params_leaf_path, array) -> array`` applied to every moment,
      e.g. `torch_to_flax` (see `optax_nadam.interop.layout`).
    param_names: the optimizer's parameter names (see `resume_from_torch`).
    sync_schedules: also set the step count of learning-rate schedules and
      ``inject_hyperparams`` in tx's state to the imported count.
    check_schedule: verify that tx's next momentum coefficient equals torch's
      (same betas[0] and momentum_decay) with one probe update on zeros.
    check_hyperparams: verify tx's whole next step against torch's
      hyperparameters (`optax_nadam.interop._check`); None (default) means
      `check_schedule`. Pass False to change a hyperparameter on purpose.

  Returns:
    A state with the structure of ``tx.init(params)``.

  Raises:
    FileNotFoundError: `optimizer_or_state_dict` is a path that does not exist.
    TypeError: not a NAdam / state dict, or a value of an unsupported type.
    ValueError: an unreadable or unsafe file; not a NAdam state (e.g. Adam's,
      which has no mu_product); a pairing that cannot be proven; wrong number
      of parameters, a shape / dtype / value that does not fit (NaN, negative
      second moment, negative or fractional step, mu_product outside [0, 1]),
      steps or mu-products that disagree between parameters; a hyperparameter
      that differs from tx's. Messages name the file, the torch parameter and
      the params leaf path.
  """
  ck, prefix = _opened(optimizer_or_state_dict, key)
  slots, hypers = _torch_state.slots_by_leaf(ck, params, layout, param_names,
                                 _torch_state.entry_leaf(ck, params, layout), prefix)
  return build_state(tx, params, slots, sync_schedules=sync_schedules,
                     check_schedule=check_schedule, hyperparams=hypers,
                     check_hyperparams=check_hyperparams)


def params_from_torch(
    source: Any,
    like: optax.Params,
    *,
    key: Optional[str] = None,
    layout: Optional[_layout.Layout] = None,
) -> optax.Params:
  """The weights of a torch model (state dict, checkpoint, file or folder) as a params tree.

  Pairing (see `resume_from_torch`): by name when `like`'s leaf names are the
  model's (``{"fc1": {"weight": ...}}``, a list for ``nn.Sequential``) or
  `layout` has a ``leaf_name`` method (`torch_to_flax`: ``fc1.weight`` ->
  ``['fc1']['kernel']``); otherwise by order (the state dict's i-th parameter
  entry is ``jax.tree.leaves(like)[i]``) when the state dict is in the
  model's order (saved by torch; not safetensors, whose names are sorted),
  or by shapes that leave one assignment. BatchNorm's running statistics fill
  ``batch_stats`` / `nnx.BatchStat` leaves when `like` has them. Each weight's
  shape is checked (after `layout`) before it is read; then its dtype
  (floating to floating) and values (finite).

  Args:
    source: a model ``state_dict()``, an ``nn.Module``, a checkpoint dict
      (state dict under ``model`` / ``model_state_dict`` / ``state_dict``, or
      `key`), or a file / folder (see `resume_from_torch`).
    like: a tree with the wanted structure, shapes and dtypes.
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
  ck, _ = _opened(source, key, want_optimizer=False)
  return _torch_params.read_params(ck, like, layout)[0]


def state_to_torch(state: optax.OptState, params: optax.Params, optimizer: Any, *,
                   param_names: Any = None) -> None:
  """Loads our state into a `torch.optim.NAdam` (via ``load_state_dict``).

  Each of the optimizer's parameters meets the params leaf of its name (the
  ``param_names`` torch keeps when the optimizer was built from
  ``model.named_parameters()``, or `param_names`); `params` as a list or
  tuple in the optimizer's order (over its param groups) also proves the
  pairing, as do shapes that leave one assignment. A dict's leaf order (jax
  sorts its keys) is never used: without names the export is refused.
  Leaves no nadam of `state` holds (frozen in tx) must not be in the
  optimizer; a leaf at step 0 gets no torch state (a fresh parameter).
  Hyperparameters are left as they are: build the optimizer like tx
  (``eps=1e-7`` for our default, ``momentum_decay`` as tx's).

  Args:
    state: a state of a tx containing `scale_by_nadam`, for `params`.
    params: the params tree the state belongs to.
    optimizer: the `torch.optim.NAdam` to load into (modified in place).
    param_names: the optimizer's parameter names, flat over its param groups
      or one list per group (e.g. ``[n for n, _ in model.named_parameters()]``
      for ``NAdam(model.parameters())``).

  Returns:
    None.

  Raises:
    TypeError: `optimizer` is not a torch NAdam.
    ValueError: a pairing that cannot be proven, a name that names no leaf,
      a count or shape that differs (named).
  """
  torch = sys.modules.get("torch")
  if torch is None or not isinstance(optimizer, torch.optim.NAdam):
    raise TypeError(f"optimizer must be a torch.optim.NAdam, got {type(optimizer).__name__}.")
  values = read_state(state, params, unheld=True)
  leaves = _pairing.like_leaves(params)
  held = [i for i, x in enumerate(values) if x is not None]
  torch_params = [p for group in optimizer.param_groups for p in group["params"]]
  sd = optimizer.state_dict()
  groups = sd["param_groups"]
  per_group = _torch_state.names_of(groups, param_names)
  names = None if None in per_group else [n for g in per_group for n in g]
  shapes = [tuple(p.shape) for p in torch_params]
  by_name = None
  if names is not None:
    by_name = _torch_state.name_leaves(names, shapes, leaves)
    if by_name is not None and None in by_name:
      k = by_name.index(None)
      raise ValueError(f"torch parameter {k} ({names[k]}) names no params leaf "
                       f"({leaves.names[:8]}...); params must be keyed by the model's names.")
  proven = held if leaves.ordered and len(held) == len(torch_params) else None
  leaf_of = _pairing.pair(
      by_name, proven, shapes, leaves, held, None,
      lambda: (f"which params leaf each of the torch optimizer's {len(torch_params)} "
               "parameters meets cannot be proven: it holds no param_names and params is "
               + ("a dict (jax orders its leaves by sorted key, not the optimizer's order)"
                  if not leaves.ordered else f"a list of {len(held)} leaves with state")
               + _pairing.equal_shapes(shapes, "torch parameters") + ". Pass param_names= "
               "(the optimizer's parameter names, flat or one list per param group: "
               "[n for n, _ in model.named_parameters()] for NAdam(model.parameters())), or "
               "build the optimizer from model.named_parameters()."))
  stateless = [leaves.paths[i] for i in leaf_of if values[i] is None]
  if stateless:
    raise ValueError(f"params leaves {stateless[:5]} have no nadam state in `state` (tx leaves "
                     "them unchanged) but the torch optimizer trains them.")
  left = [leaves.paths[i] for i in held if i not in set(leaf_of)]
  if left:
    raise ValueError(f"params leaves {left[:5]} have nadam state but no parameter of the torch "
                     "optimizer meets them.")
  ids = [pid for group in groups for pid in group["params"]]
  new_state = {}
  for k, (pid, p, i) in enumerate(zip(ids, torch_params, leaf_of)):
    count, mu_product, m, v = values[i]
    if tuple(p.shape) != m.shape:
      raise ValueError(
          f"torch parameter {k} has shape {tuple(p.shape)} but params leaf {leaves.paths[i]} "
          f"has {m.shape}."
      )
    if count == 0:
      continue  # torch's own state of a parameter never stepped: none
    new_state[pid] = {
        "step": torch.tensor(float(count), dtype=torch.float32),
        # float32, or float64 for float64 params (torch casts it to the param's dtype).
        "mu_product": torch.from_numpy(np.array(mu_product)),
        "exp_avg": torch.from_numpy(m.copy()),
        "exp_avg_sq": torch.from_numpy(v.copy()),
    }
  optimizer.load_state_dict({"state": new_state, "param_groups": groups})
