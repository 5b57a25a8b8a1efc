"""Reading live Keras optimizers and models (tf-keras legacy, Keras 3): slots by variable.

Private to `optax_nadam.interop.keras`: which Nadam a live optimizer is,
its ``(m, v)`` slot variables in params order (its creation order or a
`var_list`), Keras 3's accumulation / EMA variables, and a model's trainable
variables.
"""

from typing import Any, List, Optional, Sequence

import numpy as np

from optax_nadam.interop._state import PeerExtras, to_scalar


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
