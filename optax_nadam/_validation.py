"""Eager checks of hyperparameters: clear errors at construction time.

Hyperparameters may be Python numbers, concrete jax/numpy scalars, traced
arrays (under `jit` or `optax.inject_hyperparams`) or, for the learning rate,
schedules. Only concrete values can be checked; traced ones pass through.
"""

import math
from typing import Any, Optional

import jax


def concrete_float(value: Any) -> Optional[float]:
  """Returns `value` as a Python float when it is a concrete scalar, else None.

  Args:
    value: a Python number, a numpy/jax scalar, or a tracer.

  Returns:
    The float value, or None when `value` is traced (its value unknown now).
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return None


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    high_open: bool = False,
) -> None:
  """Raises ValueError when a concrete `value` lies outside its allowed range.

  Args:
    name: the argument's name, quoted in the message.
    value: the hyperparameter (checked only when concrete).
    low: inclusive lower bound.
    high: upper bound.
    high_open: whether `high` itself is excluded.

  Returns:
    None.

  Raises:
    ValueError: `value` is NaN or out of range.
    TypeError: `value` is neither a number nor an array scalar.
  """
  if isinstance(value, (str, bytes, bool)) or value is None:
    raise TypeError(f"{name} must be a number, got {value!r}.")
  x = concrete_float(value)
  if x is None:
    if not hasattr(value, "dtype"):
      raise TypeError(f"{name} must be a number or a scalar array, got {value!r}.")
    if getattr(value, "shape", ()) != ():
      raise ValueError(f"{name} must be a scalar, got shape {value.shape}.")
    return
  closing = ")" if high_open else "]"
  bounds = f"[{low:g}, {high:g}{closing}" if high != math.inf else f">= {low:g}"
  if math.isnan(x) or x < low or x > high or (high_open and x == high):
    raise ValueError(f"{name} must be in {bounds}, got {x!r}.")
