"""Keras learning-rate schedule configs as jax schedules (private to `keras`).

A Keras schedule serialises as ``{"class_name": "ExponentialDecay", "config":
{...}}`` (Keras 3 adds ``"module"`` and ``"registered_name"``). `from_keras_config`
reads such a dict -- plain data, never evaluated -- and returns a schedule
``step -> learning rate`` computed with the formulas of
`keras.optimizers.schedules`, in float32 like Keras, or in float64 for float64
params under x64 (the core's scalar dtype). Unknown classes or keys
raise a ValueError naming them; every number is checked by `_validation`
(learning rates in [0, 1.8e19], step counts >= 1, ExponentialDecay's
decay_rate in [0, 1], CosineDecay's alpha in [0, 1], finite float32 values).
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Tuple

import jax.numpy as jnp

from optax_nadam import _validation

Schedule = Callable[[Any], Any]


def _f(x: Any, dtype: Any) -> Any:
  """`x` as a scalar (or array) of `dtype`."""
  return jnp.asarray(x, dtype)



def _exponential(c: Dict[str, Any], dtype: Any) -> Schedule:
  def schedule(step):
    p = _f(step, dtype) / _f(c["decay_steps"], dtype)
    if c["staircase"]:
      p = jnp.floor(p)
    return _f(c["initial_learning_rate"], dtype) * jnp.power(_f(c["decay_rate"], dtype), p)

  return schedule


def _inverse_time(c: Dict[str, Any], dtype: Any) -> Schedule:
  def schedule(step):
    p = _f(step, dtype) / _f(c["decay_steps"], dtype)
    if c["staircase"]:
      p = jnp.floor(p)
    return _f(c["initial_learning_rate"], dtype) / (1.0 + _f(c["decay_rate"], dtype) * p)

  return schedule


def _piecewise_constant(c: Dict[str, Any], dtype: Any) -> Schedule:
  boundaries, values = list(c["boundaries"]), list(c["values"])
  if len(boundaries) != len(values) - 1:
    raise ValueError(
        "PiecewiseConstantDecay: 'values' must have one more entry than "
        f"'boundaries'; got {len(values)} values and {len(boundaries)} boundaries.")
  for i in range(1, len(boundaries)):
    if boundaries[i] < boundaries[i - 1]:
      raise ValueError(
          "PiecewiseConstantDecay: 'boundaries' must be in increasing order (Keras picks "
          f"the value of the first boundary the step is below); got boundaries[{i - 1}] = "
          f"{boundaries[i - 1]!r} > boundaries[{i}] = {boundaries[i]!r}. Sort them together "
          "with their values.")

  def schedule(step):
    step = jnp.asarray(step)
    # Keras: values[0] while step <= boundaries[0], values[i] on (b[i-1], b[i]].
    index = jnp.sum(jnp.stack([step > b for b in boundaries]).astype(jnp.int32))
    return _f(values, dtype)[index]

  return schedule


def _polynomial(c: Dict[str, Any], dtype: Any) -> Schedule:
  def schedule(step):
    step = _f(step, dtype)
    decay_steps = _f(c["decay_steps"], dtype)
    if c["cycle"]:
      multiplier = jnp.where(step == 0, 1.0, jnp.ceil(step / decay_steps))
      decay_steps = decay_steps * multiplier
    else:
      step = jnp.minimum(step, decay_steps)
    p = step / decay_steps
    init, end = _f(c["initial_learning_rate"], dtype), _f(c["end_learning_rate"], dtype)
    return (init - end) * jnp.power(1.0 - p, _f(c["power"], dtype)) + end

  return schedule


def _cosine(c: Dict[str, Any], dtype: Any) -> Schedule:
  alpha = c["alpha"]

  def decay(step, decay_steps, from_lr):
    cosine = 0.5 * (1.0 + jnp.cos(_f(math.pi, dtype) * (step / decay_steps)))
    return from_lr * ((1 - alpha) * cosine + alpha)

  def schedule(step):
    step = _f(step, dtype)
    init = _f(c["initial_learning_rate"], dtype)
    decay_steps = _f(c["decay_steps"], dtype)
    if c["warmup_target"] is None:
      return decay(jnp.minimum(step, decay_steps), decay_steps, init)
    target, warmup = _f(c["warmup_target"], dtype), _f(c["warmup_steps"], dtype)
    step = jnp.minimum(step, decay_steps + warmup)
    warm = (target - init) * (step / jnp.maximum(warmup, 1e-30)) + init
    return jnp.where(step < warmup, warm, decay(step - warmup, decay_steps, target))

  return schedule


_LR = _validation.LEARNING_RATE
_STEPS = _validation.Range(1.0, why="a step count, as Keras documents it")
_NON_NEGATIVE = _validation.NON_NEGATIVE
_RATE_DECAY = _validation.Range(0.0, 1.0, why=(
    "a rate above 1 grows the learning rate without bound until it overflows float32"))
_FRACTION = _validation.Range(0.0, 1.0, why="a fraction of the initial learning rate")
_BOUNDARY = _validation.Range(-_validation.F32_MAX)

# class name -> (builder, {key: (default, rule)}); a default of ... marks a required key.
# A rule is a Range (a number), bool (a flag), str (the name), "lr|None", or a
# ("list", Range) of numbers.
_SCHEDULES = {
    "ExponentialDecay": (_exponential, {
        "initial_learning_rate": (..., _LR), "decay_steps": (..., _STEPS),
        "decay_rate": (..., _RATE_DECAY), "staircase": (False, bool), "name": (None, str)}),
    "InverseTimeDecay": (_inverse_time, {
        "initial_learning_rate": (..., _LR), "decay_steps": (..., _STEPS),
        "decay_rate": (..., _NON_NEGATIVE), "staircase": (False, bool), "name": (None, str)}),
    "PiecewiseConstantDecay": (_piecewise_constant, {
        "boundaries": (..., ("list", _BOUNDARY)), "values": (..., ("list", _LR)),
        "name": (None, str)}),
    "PolynomialDecay": (_polynomial, {
        "initial_learning_rate": (..., _LR), "decay_steps": (..., _STEPS),
        "end_learning_rate": (0.0001, _LR), "power": (1.0, _NON_NEGATIVE),
        "cycle": (False, bool), "name": (None, str)}),
    "CosineDecay": (_cosine, {
        "initial_learning_rate": (..., _LR), "decay_steps": (..., _STEPS),
        "alpha": (0.0, _FRACTION), "name": (None, str), "warmup_target": (None, "lr|None"),
        "warmup_steps": (0, _NON_NEGATIVE)}),
}


def _checked(loc: str, value: Any, rule: Any) -> Any:
  """`value` checked against a rule of `_SCHEDULES` (see there)."""
  if rule is str:
    if value is not None and not isinstance(value, str):
      raise TypeError(f"{loc} must be a string, got {value!r}.")
    return value
  if rule is bool:
    return _validation.boolean(loc, value)
  if rule == "lr|None":
    return None if value is None else _validation.number(loc, value, _LR, plain=True)
  if isinstance(rule, tuple):
    if not isinstance(value, (list, tuple)) or not value:
      raise TypeError(f"{loc} must be a non-empty list of numbers, got {value!r}.")
    return [_validation.number(f"{loc}[{i}]", x, rule[1], plain=True)
            for i, x in enumerate(value)]
  return _validation.number(loc, value, rule, plain=True)


def _parse(spec: Any) -> Tuple[Callable[[Dict[str, Any]], Schedule], Dict[str, Any],
                                Dict[str, Any]]:
  """(builder, full config with defaults, `spec` with its numbers made plain floats)."""
  where = "learning_rate"
  if not isinstance(spec, dict):
    raise TypeError(f"{where} must be a number, a callable or a Keras schedule config dict, "
                    f"got {type(spec).__name__}.")
  unknown = set(spec) - {"class_name", "config", "module", "registered_name"}
  if unknown:
    raise ValueError(f"{where}: unknown schedule key(s) {sorted(unknown)}.")
  if "class_name" not in spec or "config" not in spec:
    raise ValueError(
        f"{where}: a schedule config needs 'class_name' and 'config', got {sorted(spec)}.")
  name = spec["class_name"]
  if name not in _SCHEDULES:
    raise ValueError(
        f"{where}: unsupported schedule class_name {name!r}; supported: "
        f"{sorted(_SCHEDULES)}.")
  config = spec["config"]
  if not isinstance(config, dict):
    raise TypeError(f"{where}['config'] must be a dict, got {type(config).__name__}.")
  builder, defaults = _SCHEDULES[name]
  unknown = set(config) - set(defaults)
  if unknown:
    raise ValueError(f"{where}: unknown {name} key(s) {sorted(unknown)}.")
  given = {key: _checked(f"{where}['config'][{key!r}]", value, defaults[key][1])
           for key, value in config.items()}
  c = {}
  for key, (default, _) in defaults.items():
    if key not in given and default is ...:
      raise ValueError(f"{where}: {name} needs {key!r}.")
    c[key] = given.get(key, default)
  return builder, c, {**spec, "config": given}


def from_keras_config(spec: Dict[str, Any], dtype: Any = jnp.float32) -> Schedule:
  """Builds a jax schedule from a Keras schedule config dict.

  Args:
    spec: ``{"class_name": ..., "config": {...}}`` as written by
      `keras.optimizers.schedules.serialize` (``"module"`` and
      ``"registered_name"`` are accepted and ignored).
    dtype: the dtype the schedule computes in: float32 (Keras's), or float64
      for float64 params under x64 (the core's scalar dtype).

  Returns:
    A function ``step -> learning rate`` of `dtype`.

  Raises:
    ValueError: unknown class or key, missing key, out-of-range value.
    TypeError: a value of the wrong type.
  """
  builder, c, _ = _parse(spec)
  return builder(c, dtype)


def _freeze(x: Any) -> Any:
  if isinstance(x, dict):
    return ("dict", tuple((k, _freeze(v)) for k, v in x.items()))
  if isinstance(x, (list, tuple)):
    return ("list", tuple(_freeze(v) for v in x))
  return ("value", x)


def _thaw(x: Any) -> Any:
  kind, content = x
  if kind == "dict":
    return {k: _thaw(v) for k, v in content}
  if kind == "list":
    return [_thaw(v) for v in content]
  return content


@dataclasses.dataclass(frozen=True)
class KerasSchedule:
  """A validated Keras schedule config dict, frozen so that it hashes.

  Attributes:
    frozen: the dict as nested tagged tuples (see `as_dict`).
  """

  frozen: Tuple[Any, ...]

  @classmethod
  def from_dict(cls, spec: Dict[str, Any]) -> "KerasSchedule":
    """Validates `spec` (see `from_keras_config`) and freezes it, numbers as floats."""
    return cls(_freeze(_parse(spec)[2]))

  def as_dict(self) -> Dict[str, Any]:
    """The config dict (a fresh, plain-data copy)."""
    return _thaw(self.frozen)

  def schedule(self, dtype: Any = jnp.float32) -> Schedule:
    """The jax schedule ``step -> learning rate`` computed in `dtype` (see `from_keras_config`)."""
    return from_keras_config(self.as_dict(), dtype)
