"""Keras Nadam (tf-keras legacy, Keras 3) <-> optax_nadam state (see `optax_nadam.interop`)."""

from typing import Any, List, Optional, Sequence

import numpy as np
import optax

from optax_nadam.interop.build import (
  PeerExtras,
  PeerSlot,
  build_state,
  param_paths,
  read_state,
  to_scalar,
)


def _mro_names(obj: Any) -> List[str]:
  return [f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__]


def _keras_kind(optimizer: Any) -> str:
  """'legacy' (tf-keras legacy Nadam) or 'v3' (Keras 3 / tf_keras.optimizers.Nadam)."""
  names = _mro_names(optimizer)
  if not any(n.rsplit(".", 1)[-1] == "Nadam" for n in names):
    raise TypeError(
        f"optimizer is a {type(optimizer).__name__}; state_from_keras reads a Keras Nadam "
        "(tf_keras.optimizers.legacy.Nadam, keras.optimizers.Nadam)."
    )
  if any(".legacy." in n for n in names) or hasattr(optimizer, "_m_cache"):
    return "legacy"
  return "v3"


def _value(variable: Any) -> np.ndarray:
  """A numpy copy of a tf / Keras variable's value."""
  if hasattr(variable, "numpy"):
    return np.array(variable.numpy(), copy=True)
  return np.array(variable, copy=True)


def _var_name(var: Any) -> str:
  return str(getattr(var, "path", None) or getattr(var, "name", None) or "?")


def _legacy_slot_vars(optimizer: Any, n: int, var_list: Optional[Sequence[Any]]):
  """(m, v) slot variables of a tf-keras legacy Nadam, one pair per variable."""
  if var_list is not None:
    pairs = []
    for i, var in enumerate(var_list):
      try:
        pairs.append((optimizer.get_slot(var, "m"), optimizer.get_slot(var, "v")))
      except KeyError:
        raise ValueError(
            f"Keras variable {i} ({_var_name(var)}) has no slots in this optimizer; was it "
            "in the var_list the optimizer was applied to?"
        ) from None
    return pairs
  weights = optimizer.weights
  if len(weights) != 2 + 2 * n:
    raise ValueError(
        f"The tf-keras legacy Nadam holds {len(weights)} weights (iterations, momentum "
        f"cache, then m and v per variable = {(len(weights) - 2) / 2:g} variables) but "
        f"params has {n} leaves. Pass var_list to match variables explicitly."
    )
  ms, vs = weights[2:2 + n], weights[2 + n:]
  for i, (m, v) in enumerate(zip(ms, vs)):
    m_name, v_name = _var_name(m).split(":")[0], _var_name(v).split(":")[0]
    if not (m_name.endswith("/m") and v_name.endswith("/v") and m_name[:-2] == v_name[:-2]):
      raise ValueError(
          f"The legacy Nadam's weights are not in [iterations, cache, m..., v...] order at "
          f"variable {i} ({m_name!r} / {v_name!r}). Pass var_list to match explicitly."
      )
  return list(zip(ms, vs))


def _v3_slot_vars(optimizer: Any, n: int, var_list: Optional[Sequence[Any]]):
  """(momentum, velocity) variables of a Keras 3 / tf_keras Nadam per variable."""
  ms, vs = list(optimizer._momentums), list(optimizer._velocities)
  if var_list is None:
    if len(ms) != n:
      raise ValueError(
          f"The Keras Nadam was built on {len(ms)} variables but params has {n} leaves. "
          "Pass var_list to match variables explicitly."
      )
    return list(zip(ms, vs))
  index = [_v3_index(optimizer, var, i) for i, var in enumerate(var_list)]
  return [(ms[k], vs[k]) for k in index]


def _v3_index(optimizer: Any, var: Any, i: int) -> int:
  """Position of model variable `var` in a built Keras 3 / tf_keras optimizer."""
  try:
    if hasattr(optimizer, "_get_variable_index"):
      return optimizer._get_variable_index(var)
    return optimizer._index_dict[optimizer._var_key(var)]
  except (KeyError, AttributeError):
    raise ValueError(
        f"Keras variable {i} ({_var_name(var)}) is not one the optimizer was built on."
    ) from None


def _v3_extras(optimizer: Any, n: int, var_list, count: int) -> PeerExtras:
  """Gradient accumulation and EMA state of a Keras 3 optimizer, per variable."""
  k = getattr(optimizer, "gradient_accumulation_steps", None) or 1
  raw = getattr(optimizer, "_iterations", None)
  real = int(to_scalar(_value(raw), "optimizer._iterations")) if k > 1 and raw is not None else (
      count)
  index = list(range(n)) if var_list is None else [_v3_index(optimizer, v, i)
                                                   for i, v in enumerate(var_list)]
  acc = getattr(optimizer, "_accumulated_gradients", None) or None
  ema = getattr(optimizer, "_model_variables_moving_average", None) if getattr(
      optimizer, "use_ema", False) else None
  return PeerExtras(
      mini_step=real % k,
      accumulators=[_value(acc[j]) for j in index] if acc else None,
      ema=[_value(ema[j]) for j in index] if ema else None,
  )


def state_from_keras(
    optimizer: Any,
    tx: optax.GradientTransformation,
    params: optax.Params,
    *,
    var_list: Optional[Sequence[Any]] = None,
    sync_schedules: bool = True,
    check_schedule: bool = True,
) -> optax.OptState:
  """Builds ``tx.init(params)`` filled with the state of a Keras Nadam.

  Reads a tf-keras legacy `tf_keras.optimizers.legacy.Nadam` (iterations,
  momentum cache = mu-product, slots ``m`` and ``v``), a Keras 3
  `keras.optimizers.Nadam` or a `tf_keras.optimizers.Nadam` (iterations,
  u-product, ``momentum`` and ``velocity`` variables).

  Variables are matched to ``jax.tree.leaves(params)`` one to one: by the order
  the optimizer created its slots in (its first ``apply_gradients`` / ``build``),
  or, explicitly, by `var_list`: the model variables in the order of the params
  leaves (e.g. ``model.trainable_variables``), looked up in the optimizer.

  Keras 3's Nadam has the momentum schedule ``0.96 ** t``, i.e.
  ``momentum_decay=1.0``: build tx with ``nadam(..., momentum_decay=1.0)`` (or
  ``keras.Nadam(..., schedule_decay=1.0)``); the probe (`check_schedule`)
  raises otherwise. tf-keras legacy uses its ``schedule_decay`` (0.004).

  Args:
    optimizer: the Keras Nadam (after training; an unbuilt one gives a fresh state).
    tx: the optax transformation to continue with (see `state_from_torch`).
    params: the params tree.
    var_list: optional model variables, ``var_list[i]`` being the peer of
      ``jax.tree.leaves(params)[i]``.
    sync_schedules: also set the step count of learning-rate schedules and
      ``inject_hyperparams`` in tx's state to the imported count.
    check_schedule: verify that tx's next momentum coefficient equals the
      optimizer's (beta_1 and psi) with one probe update on zeros.

  Returns:
    A state with the structure of ``tx.init(params)``.

  Raises:
    TypeError: not a Keras Nadam.
    ValueError: wrong number of variables, a shape / dtype / value that does
      not fit, a variable in `var_list` the optimizer does not know, Keras 3
      gradient accumulators that are not empty, or a momentum schedule that
      differs from tx's. The message names the variable and the params leaf.
  """
  kind = _keras_kind(optimizer)
  n = len(param_paths(params))
  if var_list is not None and len(var_list) != n:
    raise ValueError(f"var_list has {len(var_list)} variables but params has {n} leaves.")
  count = int(to_scalar(_value(optimizer.iterations), "optimizer.iterations"))
  if count < 0:
    raise ValueError(f"optimizer.iterations is {count}; a step count is >= 0.")
  if kind == "legacy":
    config = optimizer.get_config()
    b1, psi = float(config["beta_1"]), float(config["decay"])  # legacy stores psi as decay
    cache = getattr(optimizer, "_m_cache", None)
    built = cache is not None
    mu_product = to_scalar(_value(cache), "optimizer momentum_cache") if built else 1.0
    pairs = _legacy_slot_vars(optimizer, n, var_list) if built else None
    extras = PeerExtras()
  else:
    b1, psi = float(optimizer.beta_1), 1.0
    built = getattr(optimizer, "_u_product", None) is not None
    mu_product = to_scalar(_value(optimizer._u_product), "optimizer u_product") if built else 1.0
    pairs = _v3_slot_vars(optimizer, n, var_list) if built else None
    extras = _v3_extras(optimizer, n, var_list, count) if built else PeerExtras()
  slots = []
  for i in range(n):
    if pairs is None:
      slots.append(PeerSlot(f"Keras variable {i}", None, None, None, None, b1, psi))
      continue
    m, v = pairs[i]
    name = _var_name(var_list[i]) if var_list is not None else _var_name(m)
    where = f"Keras variable {i} ({name})"
    slots.append(PeerSlot(where, count, mu_product, _value(m), _value(v), b1, psi))
  if not built and count:
    raise ValueError(f"optimizer.iterations is {count} but the optimizer has no slots.")
  return build_state(tx, params, slots, sync_schedules=sync_schedules,
                     check_schedule=check_schedule, extras=extras)


def state_to_keras(
    state: optax.OptState,
    params: optax.Params,
    optimizer: Any,
    *,
    var_list: Optional[Sequence[Any]] = None,
) -> None:
  """Writes our state into a Keras Nadam (tf-keras legacy or Keras 3).

  The optimizer's slots must exist: pass `var_list` (the model variables in
  the order of ``jax.tree.leaves(params)``) and they are created if needed;
  without it the optimizer must already be built and its variables are matched
  by the order it created them in. Hyperparameters are left as they are: build
  the optimizer like tx (Keras 3 follows tx only with ``momentum_decay=1.0``).

  Args:
    state: a state of a tx containing `scale_by_nadam`, for `params`.
    params: the params tree the state belongs to.
    optimizer: the Keras Nadam to write into (modified in place).
    var_list: optional model variables matching the params leaves.

  Returns:
    None.

  Raises:
    TypeError: not a supported Keras Nadam.
    ValueError: variable count or a shape differs (named), or the optimizer
      has no slots and no var_list was given.
  """
  kind = _keras_kind(optimizer)
  values = read_state(state, params)
  paths = param_paths(params)
  n = len(values)
  if var_list is not None and len(var_list) != n:
    raise ValueError(f"var_list has {len(var_list)} variables but params has {n} leaves.")
  if kind == "legacy":
    if var_list is not None:
      optimizer._create_all_weights(list(var_list))
    if getattr(optimizer, "_m_cache", None) is None:
      raise ValueError("The legacy Nadam has no slots yet: pass var_list to create them.")
    pairs = _legacy_slot_vars(optimizer, n, var_list)
    product_var = optimizer._m_cache
  else:
    if hasattr(optimizer, "_u_product_counter"):
      # tf_keras.optimizers.Nadam caches its product behind a Python counter
      # that a traced train step captures; its state cannot be set reliably.
      raise TypeError("state_to_keras writes tf-keras legacy and Keras 3 Nadam only.")
    if var_list is not None and not getattr(optimizer, "built", False):
      optimizer.build(list(var_list))
    if getattr(optimizer, "_u_product", None) is None:
      raise ValueError("The Keras Nadam is not built: pass var_list to build it.")
    pairs = _v3_slot_vars(optimizer, n, var_list)
    product_var = optimizer._u_product
  counts = {c for c, _, _, _ in values}
  if len(counts) != 1:
    raise ValueError(f"The state holds several step counts {sorted(counts)}; Keras has one.")
  mu_products = {mp for _, mp, _, _ in values}
  for i, ((m_var, v_var), (_, _, m, v)) in enumerate(zip(pairs, values)):
    if tuple(m_var.shape) != m.shape:
      raise ValueError(
          f"Keras variable {i} ({_var_name(m_var)}) has shape {tuple(m_var.shape)} but params "
          f"leaf {paths[i]} has {m.shape}."
      )
    m_var.assign(m.astype(np.dtype(_value(m_var).dtype)))
    v_var.assign(v.astype(np.dtype(_value(v_var).dtype)))
  optimizer.iterations.assign(counts.pop())
  product_var.assign(np.float32(mu_products.pop()))
