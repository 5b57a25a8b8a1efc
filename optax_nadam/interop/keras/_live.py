"""Reading live Keras optimizers and models (tf-keras legacy, Keras 3): slots by variable.

Private to `optax_nadam.interop.keras`: which Nadam a live optimizer is,
its ``(m, v)`` slot variables in params order (its creation order or a
`var_list`), Keras 3's accumulation / EMA variables, and a model's trainable
variables.
"""

from typing import Any, List, Optional, Sequence

import numpy as np

from optax_nadam.interop._state import PeerExtras, PeerSlot, param_paths, to_scalar
from optax_nadam.interop.keras import _hyper
from optax_nadam.interop.keras._file_state import build_checked, laid_out
from optax_nadam.interop.keras._kerasfile import (
  schedule_product,
  tf_keras_nadam,
  u_product_is_nadams,
)


def mro_names(obj: Any) -> List[str]:
  return [f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__]


def unwrap(optimizer: Any) -> Any:
  """The Nadam inside a ``LossScaleOptimizer`` (Keras 3 or tf-keras), else `optimizer`."""
  if type(optimizer).__name__ == "LossScaleOptimizer":
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is None:
      raise TypeError("optimizer is a LossScaleOptimizer without an inner_optimizer.")
    return inner
  return optimizer


def keras_kind(optimizer: Any) -> str:
  """'legacy' (tf-keras legacy Nadam) or 'v3' (Keras 3 / tf_keras.optimizers.Nadam)."""
  names = mro_names(optimizer)
  if not any(n.rsplit(".", 1)[-1] == "Nadam" for n in names):
    raise TypeError(
        f"optimizer is a {type(optimizer).__name__}; state_from_keras reads a Keras Nadam "
        "(tf_keras.optimizers.legacy.Nadam, keras.optimizers.Nadam)."
    )
  if any(".legacy." in n for n in names) or hasattr(optimizer, "_m_cache"):
    return "legacy"
  return "v3"


def value(variable: Any) -> np.ndarray:
  """A numpy copy of a tf / Keras variable's value."""
  if hasattr(variable, "numpy"):
    return np.array(variable.numpy(), copy=True)
  return np.array(variable, copy=True)


def var_name(var: Any) -> str:
  return str(getattr(var, "path", None) or getattr(var, "name", None) or "?")


def legacy_slot_vars(optimizer: Any, n: int, var_list: Optional[Sequence[Any]]):
  """(m, v) slot variables of a tf-keras legacy Nadam, one pair per variable."""
  if var_list is not None:
    pairs = []
    for i, var in enumerate(var_list):
      try:
        pairs.append((optimizer.get_slot(var, "m"), optimizer.get_slot(var, "v")))
      except KeyError:
        raise ValueError(
            f"Keras variable {i} ({var_name(var)}) has no slots in this optimizer; was it "
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
    m_name, v_name = var_name(m).split(":")[0], var_name(v).split(":")[0]
    if not (m_name.endswith("/m") and v_name.endswith("/v") and m_name[:-2] == v_name[:-2]):
      raise ValueError(
          f"The legacy Nadam's weights are not in [iterations, cache, m..., v...] order at "
          f"variable {i} ({m_name!r} / {v_name!r}). Pass var_list to match explicitly."
      )
  return list(zip(ms, vs))


def v3_slot_vars(optimizer: Any, n: int, var_list: Optional[Sequence[Any]]):
  """(momentum, velocity) variables of a Keras 3 / tf_keras Nadam per variable."""
  ms, vs = list(optimizer._momentums), list(optimizer._velocities)
  if var_list is None:
    if len(ms) != n:
      raise ValueError(
          f"The Keras Nadam was built on {len(ms)} variables but params has {n} leaves. "
          "Pass var_list to match variables explicitly."
      )
    return list(zip(ms, vs))
  index = [v3_index(optimizer, var, i) for i, var in enumerate(var_list)]
  return [(ms[k], vs[k]) for k in index]


def v3_index(optimizer: Any, var: Any, i: int) -> int:
  """Position of model variable `var` in a built Keras 3 / tf_keras optimizer."""
  try:
    if hasattr(optimizer, "_get_variable_index"):
      return optimizer._get_variable_index(var)
    return optimizer._index_dict[optimizer._var_key(var)]
  except (KeyError, AttributeError):
    raise ValueError(
        f"Keras variable {i} ({var_name(var)}) is not one the optimizer was built on."
    ) from None


def v3_extras(optimizer: Any, n: int, var_list, count: int) -> PeerExtras:
  """Gradient accumulation and EMA state of a Keras 3 optimizer, per variable."""
  k = getattr(optimizer, "gradient_accumulation_steps", None) or 1
  raw = getattr(optimizer, "_iterations", None)
  real = int(to_scalar(value(raw), "optimizer._iterations")) if k > 1 and raw is not None else (
      count)
  index = list(range(n)) if var_list is None else [v3_index(optimizer, v, i)
                                                   for i, v in enumerate(var_list)]
  acc = getattr(optimizer, "_accumulated_gradients", None) or None
  ema = getattr(optimizer, "_model_variables_moving_average", None) if getattr(
      optimizer, "use_ema", False) else None
  return PeerExtras(
      mini_step=real % k,
      accumulators=[value(acc[j]) for j in index] if acc else None,
      ema=[value(ema[j]) for j in index] if ema else None,
  )


def live_weights(source: Any) -> Any:
  """A live Keras model's trainable variables (or a variable list) as plain data.

  Args:
    source: a Keras model (its ``trainable_variables`` / ``trainable_weights``)
      or a list or tuple of its variables.

  Returns:
    ``(where, names, arrays)``: ``"source"`` (how messages name the origin),
    each variable's name, and a numpy copy of each variable's value.

  Raises:
    TypeError: `source` is none of these.
  """
  variables = getattr(source, "trainable_variables", None)
  if variables is None:
    variables = getattr(source, "trainable_weights", None)
  if variables is None:
    if not isinstance(source, (list, tuple)):
      raise TypeError(
          f"source is a {type(source).__name__}; params_from_keras reads a file path, a Keras "
          "model or a list of its variables.")
    variables = source
  return "source", [var_name(v) for v in variables], [value(v) for v in variables]


def decayed(optimizer: Any, var_list: Optional[Sequence[Any]]) -> Optional[List[bool]]:
  """Per model variable, whether a Keras 3 / tf_keras Nadam applies its weight decay.

  Keras keeps ``exclude_from_weight_decay`` in the optimizer, not in its config:
  asked per variable (``_use_weight_decay``). None without weight decay.
  """
  optimizer = unwrap(optimizer)
  if not getattr(optimizer, "weight_decay", None) or not hasattr(optimizer, "_use_weight_decay"):
    return None
  variables = var_list if var_list is not None else getattr(optimizer, "_trainable_variables",
                                                            None)
  if variables is None:
    return None
  return [bool(optimizer._use_weight_decay(v)) for v in variables]


def live_state(source: Any, tx: Any, params: Any, var_list: Optional[Sequence[Any]],
               layout: Any, sync_schedules: bool = True, check_schedule: bool = True,
               check_hyperparams: Optional[bool] = None) -> Any:
  """`state_from_keras` for a live Keras Nadam (possibly in a LossScaleOptimizer)."""
  optimizer = unwrap(source)
  kind = keras_kind(optimizer)
  paths = param_paths(params)
  n = len(paths)
  if var_list is not None and len(var_list) != n:
    raise ValueError(f"var_list has {len(var_list)} variables but params has {n} leaves.")
  count = int(to_scalar(value(optimizer.iterations), "optimizer.iterations"))
  if count < 0:
    raise ValueError(f"optimizer.iterations is {count}; a step count is >= 0.")
  config = optimizer.get_config()
  real = count
  if kind == "legacy":
    b1, psi = float(config["beta_1"]), float(config["decay"])  # legacy stores psi as decay
    cache = getattr(optimizer, "_m_cache", None)
    built = cache is not None
    mu_product = to_scalar(value(cache), "optimizer momentum_cache") if built else 1.0
    pairs = legacy_slot_vars(optimizer, n, var_list) if built else None
    extras = PeerExtras()
  else:
    b1, psi = float(optimizer.beta_1), 1.0
    built = getattr(optimizer, "_u_product", None) is not None
    mu_product = to_scalar(value(optimizer._u_product), "optimizer u_product") if built else 1.0
    if built and count > 0 and float(mu_product) == 1.0:
      raise ValueError(
          f"The Keras Nadam{' inside the LossScaleOptimizer' if optimizer is not source else ''}"
          f" has taken {count} steps but its u-product is still 1.0: it never advanced (a "
          "LossScaleOptimizer under the JAX backend does not carry it through the train "
          "step), so its steps are not Nadam's and cannot be continued. params_from_keras "
          "reads the weights.")
    if built and hasattr(optimizer, "_u_product_counter") and not u_product_is_nadams(
        float(mu_product), b1, count):
      raise ValueError(tf_keras_nadam("The live optimizer", (
          f"its u-product is {float(mu_product):.3g} where Nadam's momentum schedule gives "
          f"{schedule_product(b1, count):.3g} after {count} steps")))
    pairs = v3_slot_vars(optimizer, n, var_list) if built else None
    extras = v3_extras(optimizer, n, var_list, count) if built else PeerExtras()
    k = int(config.get("gradient_accumulation_steps") or 0)
    # The peer's next Nadam step is on the cycle's last call: its schedule sees that call.
    real = count * k + k - 1 if k else count
  hyper = _hyper.hyperparams(kind, config, real, "the Keras optimizer")
  slots = []
  for i in range(n):
    if pairs is None:
      slots.append(PeerSlot(f"Keras variable {i}", None, None, None, None, b1, psi))
      continue
    m, v = pairs[i]
    name = var_name(var_list[i]) if var_list is not None else var_name(m)
    where = f"Keras variable {i} ({name})"
    slots.append(PeerSlot(where, count, mu_product, laid_out(layout, paths[i], value(m), where),
                          laid_out(layout, paths[i], value(v), where), b1, psi))
  if not built and count:
    raise ValueError(f"optimizer.iterations is {count} but the optimizer has no slots.")
  if layout is not None and (extras.ema is not None or extras.accumulators is not None):
    each = lambda xs: None if xs is None else [  # noqa: E731
        laid_out(layout, p, x, s.where) for p, x, s in zip(paths, xs, slots)]
    extras = extras._replace(accumulators=each(extras.accumulators), ema=each(extras.ema))
  return build_checked(tx, params, slots, extras, hyper, config, "the Keras optimizer",
                       sync_schedules=sync_schedules, check_schedule=check_schedule,
                       check_hyperparams=check_hyperparams,
                       decayed=decayed(optimizer, var_list) if kind != "legacy" else None)
