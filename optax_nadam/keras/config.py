"""`NadamConfig`: the validated, frozen arguments of `optax_nadam.keras.Nadam` (private).

Everything here is plain-data checking: values are numbers, bools, strings,
lists of strings or Keras schedule dicts; nothing is evaluated or unpickled.
Each argument has one validator in `VALIDATORS`; the numeric rules (and the
ranges the core shares) are `optax_nadam._validation`'s.
"""

import copy
import dataclasses
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from optax_nadam import _validation
from optax_nadam.keras import schedules as _keras_schedules


@dataclasses.dataclass(frozen=True)
class NadamConfig:
  """The validated arguments of `Nadam`, immutable and hashable (a jit static argument).

  Build one with `NadamConfig.create` (validates); change one with
  `dataclasses.replace` followed by `create(**config.kwargs())`, never in place.
  Field order is `Nadam`'s argument order; the first five are positional there.
  The field defaults are the one place the defaults are written: `Nadam`'s
  signature and `DEFAULTS` take them from here.

  Attributes:
    learning_rate: a float, a callable schedule, or a `KerasSchedule`.
    exclude_from_weight_decay: a tuple of regexes.
    The others: as `Nadam`'s arguments, numbers as Python floats/ints (or
    traced scalars under `optax.inject_hyperparams`).
  """

  learning_rate: Union[float, Callable[[Any], Any], _keras_schedules.KerasSchedule] = 0.001
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-07
  name: str = "Nadam"
  schedule_decay: float = 0.004
  decay: float = 0.0
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  weight_decay: Optional[float] = None
  exclude_from_weight_decay: Tuple[str, ...] = ()
  use_ema: bool = False
  ema_momentum: float = 0.99
  ema_overwrite_frequency: Optional[int] = None
  loss_scale_factor: Optional[float] = None
  gradient_accumulation_steps: Optional[int] = None

  @classmethod
  def create(cls, **kwargs: Any) -> "NadamConfig":
    """Validates `Nadam`'s keyword arguments (``lr`` too) into a config.

    Raises:
      TypeError: an unknown keyword, or a value of the wrong type.
      ValueError: a value out of range, or two arguments that exclude each other.
    """
    c = normalize(kwargs)
    lr = c["learning_rate"]
    if isinstance(lr, dict):
      c["learning_rate"] = _keras_schedules.KerasSchedule.from_dict(lr)
    c["exclude_from_weight_decay"] = tuple(c["exclude_from_weight_decay"])
    return cls(**c)

  def kwargs(self) -> Dict[str, Any]:
    """The fields as `Nadam` keyword arguments (a schedule as its dict, exclusions a list)."""
    c = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if isinstance(self.learning_rate, _keras_schedules.KerasSchedule):
      c["learning_rate"] = self.learning_rate.as_dict()
    c["exclude_from_weight_decay"] = list(self.exclude_from_weight_decay)
    return c

  @property
  def accumulation(self) -> int:
    """k of gradient accumulation (1 without)."""
    return self.gradient_accumulation_steps or 1


# Argument order and defaults, as `Nadam`'s signature (exclusions as Keras's list).
DEFAULTS: Dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(NadamConfig)}
DEFAULTS["exclude_from_weight_decay"] = []
# Keys the peers write that have no effect here (XLA always compiles).
_IGNORED_PEER_KEYS = ("jit_compile", "is_legacy_optimizer")
# The first key here that a config has marks it as written by Keras 3 or by
# tf-keras's non-legacy optimizer, both of which run Nadam with psi = 1.
_KERAS3_MARKERS = ("use_ema", "ema_momentum", "loss_scale_factor",
                   "gradient_accumulation_steps")


# The Keras-only ranges; beta_1, beta_2, epsilon, schedule_decay, learning_rate and
# weight_decay reuse the core's (`_validation`), so each range is stated once.
_CLIPNORM = _validation.Range(_validation.F32_TINY, _validation.SQRT_F32_MAX, why=(
    "a normal float32 (a smaller one is 0 on the CPU and 0/0 clips zero gradients to NaN); "
    "a float32 norm is at most 1.8e19, so a larger clipnorm never clips; pass None for no "
    "clipping"))
_CLIPVALUE = _validation.Range(0.0, low_open=True, why="pass None for no clipping")
_LOSS_SCALE = _validation.Range(_validation.F32_TINY, why=(
    "a normal float32, so that 1 / loss_scale_factor is finite"))
_EMA_MOMENTUM = _validation.Range(0.0, 1.0)


def _learning_rate(key: str, value: Any) -> Any:
  if isinstance(value, dict):
    _keras_schedules.from_keras_config(value)  # validates
    return copy.deepcopy(value)
  if callable(value):
    return value
  return _validation.number(key, value, _validation.LEARNING_RATE, plain=True)


def _float(allowed: _validation.Range, optional: bool = False) -> Callable[[str, Any], Any]:
  def check(key: str, value: Any) -> Any:
    if optional and value is None:
      return None
    return _validation.number(key, value, allowed, plain=True)

  return check


def _counter(key: str, value: Any) -> Optional[int]:
  return _validation.optional_integer(key, value, 1)


def _name(key: str, value: Any) -> str:
  if not isinstance(value, str):
    raise TypeError(f"{key} must be a string, got {value!r}.")
  return value


def _patterns(key: str, value: Any) -> List[str]:
  if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
      isinstance(n, str) for n in value):
    raise TypeError(f"{key} must be a list of strings, got {value!r}.")
  for pattern in value:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{key}: {pattern!r} is not a valid regular expression ({e}).") from None
  return list(value)


# key -> validator(key, value) -> canonical value. Every Nadam argument is here.
VALIDATORS: Dict[str, Callable[[str, Any], Any]] = {
    "learning_rate": _learning_rate,
    "beta_1": _float(_validation.UNIT_OPEN),
    "beta_2": _float(_validation.UNIT_OPEN),
    "epsilon": _float(_validation.NON_NEGATIVE),
    "name": _name,
    "schedule_decay": _float(_validation.NON_NEGATIVE),
    "decay": _float(_validation.NON_NEGATIVE),
    "clipnorm": _float(_CLIPNORM, optional=True),
    "clipvalue": _float(_CLIPVALUE, optional=True),
    "global_clipnorm": _float(_CLIPNORM, optional=True),
    "weight_decay": _float(_validation.WEIGHT_DECAY, optional=True),
    "exclude_from_weight_decay": _patterns,
    "use_ema": _validation.boolean,
    "ema_momentum": _float(_EMA_MOMENTUM),
    "ema_overwrite_frequency": _counter,
    "loss_scale_factor": _float(_LOSS_SCALE, optional=True),
    "gradient_accumulation_steps": _counter,
}
assert list(VALIDATORS) == list(DEFAULTS)


def normalize(kwargs: Dict[str, Any]) -> Dict[str, Any]:
  """Validates constructor arguments; returns the full, canonical config.

  Each value goes through its entry of `VALIDATORS`; then the rules between
  arguments: clipnorm excludes global_clipnorm, and ``learning_rate *
  weight_decay <= 2`` when both are numbers.

  Args:
    kwargs: the constructor's keyword arguments (``learning_rate`` may be a
      float, a Keras schedule config dict or a callable schedule).

  Returns:
    A dict with every key of `DEFAULTS`, values as plain Python types (the
    schedule dict deep-copied; a callable kept as is).

  Raises:
    TypeError: an unknown keyword, or a value of the wrong type.
    ValueError: a value out of range or clipnorm together with global_clipnorm.
  """
  kwargs = dict(kwargs)
  if "lr" in kwargs:
    warnings.warn("`lr` is deprecated in Nadam, use `learning_rate` instead.",
                  DeprecationWarning, stacklevel=3)
    lr = kwargs.pop("lr")
    if kwargs.get("learning_rate", DEFAULTS["learning_rate"]) != DEFAULTS["learning_rate"]:
      raise ValueError("Nadam: pass `learning_rate` or its deprecated alias `lr`, not both.")
    kwargs["learning_rate"] = lr
  unknown = sorted(set(kwargs) - set(DEFAULTS))
  if unknown:
    raise TypeError(f"Nadam got unexpected keyword argument(s) {unknown}; accepted: "
                    f"{sorted(DEFAULTS) + ['lr']}.")
  c = {**copy.deepcopy(DEFAULTS), **kwargs}
  c = {key: check(key, c[key]) for key, check in VALIDATORS.items()}
  if c["clipnorm"] is not None and c["global_clipnorm"] is not None:
    raise ValueError("Nadam: clipnorm and global_clipnorm cannot both be set (as in "
                     f"tf-keras); got clipnorm={c['clipnorm']}, "
                     f"global_clipnorm={c['global_clipnorm']}.")
  if c["weight_decay"] is not None and not isinstance(c["learning_rate"], dict):
    _validation.decay_product(c["learning_rate"], c["weight_decay"])
  return c


def from_peer_config(config: Dict[str, Any]) -> Dict[str, Any]:
  """Maps a config from us, tf-keras legacy, tf-keras or Keras 3 to our kwargs.

  The psi rule (``schedule_decay``, the momentum schedule's decay):
  1. the config has ``schedule_decay`` (written by us): psi is that, and
     ``decay`` is the inverse-time learning-rate decay;
  2. else it has a Keras 3 / tf-keras (non-legacy) key such as ``use_ema``:
     those optimizers run psi = 1.0, so psi = 1.0 (a ``decay`` key there is
     refused as ambiguous);
  3. else it has ``decay`` (written by `tf_keras.optimizers.legacy.Nadam`,
     which stores its schedule_decay under that name): psi = decay and no
     learning-rate decay;
  4. else psi = 0.004, the seed's default.

  Args:
    config: a dict of plain values.

  Returns:
    Keyword arguments for `Nadam`.

  Raises:
    TypeError: `config` is not a dict, or a value has the wrong type.
    ValueError: an unknown key, an ambiguous ``decay``, or a value out of range.
  """
  if not isinstance(config, dict):
    raise TypeError(f"Nadam.from_config expects a dict, got {type(config).__name__}.")
  c = dict(config)
  for key in _IGNORED_PEER_KEYS:
    if key in c and not isinstance(c[key], (bool, np.bool_)):
      raise TypeError(f"{key} must be a bool, got {c[key]!r}.")
    c.pop(key, None)
  unknown = sorted(set(c) - set(DEFAULTS) - {"lr"})
  if unknown:
    raise ValueError(f"Nadam.from_config: unknown config key(s) {unknown}; known: "
                     f"{sorted(DEFAULTS)}.")
  if "schedule_decay" not in c:
    if any(k in c for k in _KERAS3_MARKERS):
      if "decay" in c:
        raise ValueError(
            "Nadam.from_config: 'decay' in a Keras 3 / tf-keras config (it has "
            "'use_ema') is ambiguous; write 'schedule_decay' (momentum) and/or "
            "'decay' (learning-rate decay) explicitly.")
      c["schedule_decay"] = 1.0
    elif "decay" in c:
      c["schedule_decay"] = _validation.number(
          "from_config: 'decay' (tf-keras legacy's schedule_decay)", c.pop("decay"),
          _validation.NON_NEGATIVE, plain=True)
  return c
