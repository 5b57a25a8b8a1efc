"""A Keras Nadam's config as peer hyperparameters (in `PeerHyperparams` terms).

Keras 3 (``keras.optimizers.Nadam``, also ``tf_keras.optimizers.Nadam``): the
momentum schedule has psi = 1; ``weight_decay`` is decoupled
(``var -= var * wd * lr``); ``learning_rate`` may be a schedule config, read at
the real step count; clipping (``clipnorm`` per variable, ``clipvalue``,
``global_clipnorm``) happens inside the optimizer.

tf-keras legacy (``tf_keras.optimizers.legacy.Nadam``): psi is its
``schedule_decay``, which it stores under ``decay``; no weight decay. A TF
checkpoint stores only the hyperparameters that are variables
(``learning_rate``, ``beta_1``, ``beta_2``, ``decay``): epsilon is then the
class default 1e-7 and clipping is not checked.
"""

from typing import Any, Dict, Optional

import numpy as np

_LEGACY_EPSILON = 1e-7  # tf_keras.optimizers.legacy.Nadam's default


def _num(config: Dict[str, Any], key: str, default: Optional[float], where: str) -> Any:
  value = config.get(key, default)
  if value is None:
    return None
  try:
    return float(np.asarray(value).reshape(()))
  except (TypeError, ValueError):
    raise ValueError(f"{where}: the optimizer config's {key!r} is {value!r}, not a number.") \
        from None


def learning_rate_at(value: Any, real_steps: int, where: str) -> float:
  """The learning rate of the next step: a number, or a schedule config at `real_steps`."""
  if isinstance(value, dict):
    from optax_nadam.keras import schedules  # plain-data schedule configs, never evaluated

    return float(schedules.from_keras_config(value)(real_steps))
  if value is None:
    raise ValueError(f"{where}: the optimizer config has no learning_rate.")
  return float(np.asarray(value).reshape(()))


def hyperparams(kind: str, config: Dict[str, Any], real_steps: int, where: str,
                complete: bool = True) -> Dict[str, Any]:
  """The fields of `optax_nadam.interop._check.PeerHyperparams` for a Keras Nadam.

  Args:
    kind: ``"v3"`` (Keras 3 / tf_keras.optimizers.Nadam) or ``"legacy"``.
    config: the optimizer's ``get_config()`` (from a file or a live object).
    real_steps: ``apply_gradients`` calls so far (a schedule's step).
    where: names the source in error messages.
    complete: False for a TF checkpoint, which lacks epsilon and clipping.

  Returns:
    A dict with ``learning_rate, b1, b2, eps, psi, weight_decay,
    decoupled_weight_decay, maximize, clipnorm, clipvalue, global_clipnorm,
    clips_in_optimizer``.
  """
  lr = learning_rate_at(config.get("learning_rate"), real_steps, where)
  out = dict(
      learning_rate=lr, b1=_num(config, "beta_1", 0.9, where),
      b2=_num(config, "beta_2", 0.999, where),
      eps=_num(config, "epsilon", _LEGACY_EPSILON, where), maximize=False,
      clipnorm=_num(config, "clipnorm", None, where),
      clipvalue=_num(config, "clipvalue", None, where),
      global_clipnorm=_num(config, "global_clipnorm", None, where),
      clips_in_optimizer=complete)
  if kind == "legacy":
    out.update(psi=_num(config, "decay", 0.004, where), weight_decay=0.0,
               decoupled_weight_decay=False)
  else:
    out.update(psi=1.0, weight_decay=_num(config, "weight_decay", None, where) or 0.0,
               decoupled_weight_decay=True)
  return out
