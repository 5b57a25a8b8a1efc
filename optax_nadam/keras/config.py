"""Keyword and config validation for `optax_nadam.keras.Nadam` (private).

Everything here is plain-data checking: values are numbers, bools, strings,
lists of strings or Keras schedule dicts; nothing is evaluated or unpickled.
"""

import copy
import math
import numbers
import warnings
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam.keras import schedules as _keras_schedules

# Constructor order: the first five are Nadam's positional parameters.
DEFAULTS: Dict[str, Any] = {
    "learning_rate": 0.001,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-07,
    "name": "Nadam",
    "schedule_decay": 0.004,
    "decay": 0.0,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "weight_decay": None,
    "exclude_from_weight_decay": [],
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}
# Keys the peers write that have no effect here (XLA always compiles).
_IGNORED_PEER_KEYS = ("jit_compile", "is_legacy_optimizer")
# The first key here that a config has marks it as written by Keras 3 or by
# tf-keras's non-legacy optimizer, both of which run Nadam with psi = 1.
_KERAS3_MARKERS = ("use_ema", "ema_momentum", "loss_scale_factor",
                   "gradient_accumulation_steps")


def _float(key: str, value: Any, low: float, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> Any:
  if isinstance(value, jax.core.Tracer) and value.shape == ():
    return value  # traced (optax.inject_hyperparams): checked when concrete
  if isinstance(value, jax.Array) and value.shape == () and jnp.issubdtype(
      value.dtype, jnp.floating):
    value = value.item()
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (numbers.Real, np.floating, np.integer)):
    raise TypeError(f"{key} must be a number, got {value!r} ({type(value).__name__}).")
  x = float(value)
  lo_ok = x > low if low_open else x >= low
  hi_ok = x < high if high_open else x <= high
  if math.isnan(x) or not (lo_ok and hi_ok):
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    raise ValueError(f"{key} must be in {lo}{low:g}, {high:g}{hi}, got {x!r}.")
  return x


def _optional_float(key, value, **bounds) -> Optional[float]:
  return None if value is None else _float(key, value, **bounds)


def _optional_int(key: str, value: Any, low: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and (
      value.shape == () and jnp.issubdtype(value.dtype, jnp.integer)):
    value = value.item()
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{key} must be an int or None, got {value!r}.")
  if int(value) < low:
    raise ValueError(f"{key} must be >= {low} or None, got {int(value)}.")
  return int(value)


def normalize(kwargs: Dict[str, Any]) -> Dict[str, Any]:
  """Validates constructor arguments; returns the full, canonical config.

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
  c = {**copy.deepcopy({k: v for k, v in DEFAULTS.items()}), **kwargs}
  if not isinstance(c["name"], str):
    raise TypeError(f"name must be a string, got {c['name']!r}.")
  lr = c["learning_rate"]
  if isinstance(lr, dict):
    _keras_schedules.from_keras_config(lr)  # validates
    c["learning_rate"] = copy.deepcopy(lr)
  elif not callable(lr):
    c["learning_rate"] = _float("learning_rate", lr, 0.0)
  c["beta_1"] = _float("beta_1", c["beta_1"], 0.0, 1.0, high_open=True)
  c["beta_2"] = _float("beta_2", c["beta_2"], 0.0, 1.0, high_open=True)
  c["epsilon"] = _float("epsilon", c["epsilon"], 0.0)
  c["schedule_decay"] = _float("schedule_decay", c["schedule_decay"], 0.0)
  c["decay"] = _float("decay", c["decay"], 0.0)
  for key in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
    c[key] = _optional_float(key, c[key], low=0.0, low_open=True)
  if c["clipnorm"] is not None and c["global_clipnorm"] is not None:
    raise ValueError("Nadam: clipnorm and global_clipnorm cannot both be set (as in "
                     f"tf-keras); got clipnorm={c['clipnorm']}, "
                     f"global_clipnorm={c['global_clipnorm']}.")
  c["weight_decay"] = _optional_float("weight_decay", c["weight_decay"], low=0.0)
  names = c["exclude_from_weight_decay"]
  if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(
      isinstance(n, str) for n in names):
    raise TypeError(f"exclude_from_weight_decay must be a list of strings, got {names!r}.")
  c["exclude_from_weight_decay"] = list(names)
  if not isinstance(c["use_ema"], (bool, np.bool_)):
    raise TypeError(f"use_ema must be a bool, got {c['use_ema']!r}.")
  c["use_ema"] = bool(c["use_ema"])
  c["ema_momentum"] = _float("ema_momentum", c["ema_momentum"], 0.0, 1.0)
  c["ema_overwrite_frequency"] = _optional_int(
      "ema_overwrite_frequency", c["ema_overwrite_frequency"], 1)
  c["gradient_accumulation_steps"] = _optional_int(
      "gradient_accumulation_steps", c["gradient_accumulation_steps"], 1)
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
      c["schedule_decay"] = c.pop("decay")
  return c
