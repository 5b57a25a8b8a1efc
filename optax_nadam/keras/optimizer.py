"""`Nadam`: the Keras optimizer API (tf-keras legacy and Keras 3) as an optax optimizer.

`Nadam(...)` *is* an `optax.GradientTransformationExtraArgs` (``init`` and
``update`` plug into `optax.chain`, `flax.nnx.Optimizer` and `jax.jit`) and
offers the Keras methods as pure functions of an explicit state:
``iterations(state)``, ``get_slot``, ``get_weights``/``set_weights``,
``apply_gradients(grads_and_vars, state) -> (new_vars, new_state)``,
``minimize``, ``get_config``/``from_config`` and so on.

It is three things, each immutable: a frozen `NadamConfig` (``opt.config``,
validated once; its fields' defaults are the constructor's), ``build(config)``
(its ``init``/``update``, pure functions of the config, in
`optax_nadam.keras.build` with the update order and the state layout), and
`optax_nadam.keras.methods.KerasMethods`, which holds both, adds the Keras
methods and makes the optimizer a value: ``Nadam(0.01) == Nadam(0.01)``, with
equal hashes, so `jax.jit` traces once for equal optimizers passed as a
static argument. This class adds the Keras constructor and config methods.
The Nadam math is `optax_nadam.transform.scale_by_nadam`.

Config psi rule (``from_config``): ``schedule_decay`` present -> psi = it and
``decay`` is learning-rate decay; else a Keras 3 / tf-keras key (``use_ema``...)
-> psi = 1.0; else ``decay`` present (tf-keras legacy writes its schedule_decay
there) -> psi = decay, no learning-rate decay; else psi = 0.004.
"""

import copy
from typing import Any, Dict, Optional, Sequence, Union

import jax
import optax

from optax_nadam.keras import config as _keras_config
from optax_nadam.keras.build import KerasNadamState
from optax_nadam.keras.config import NadamConfig
from optax_nadam.keras.methods import KerasMethods
from optax_nadam.keras.schedules import KerasSchedule

__all__ = ["KerasNadamState", "Nadam", "NadamConfig"]


def _from_config_object(config: NadamConfig) -> "Nadam":
  """Rebuilds a `Nadam` from its (already validated) config: pickle and deepcopy."""
  return Nadam._create(config)


# The defaults are written once, as `NadamConfig`'s field defaults.
_DEFAULT = NadamConfig()


class Nadam(KerasMethods):
  """NAdam with the Keras optimizer API, as an optax `GradientTransformation`.

  The arguments are `tf.keras.optimizers.Nadam`'s (tf-keras legacy) with
  Keras 3's extras. Defaults follow tf-keras legacy, i.e. the seed's NAdam with
  momentum schedule ``psi = schedule_decay = 0.004``; pass
  ``schedule_decay=1.0`` for Keras 3's trajectory. The optimizer is an
  immutable value: ``opt.config`` is its frozen `NadamConfig`, two optimizers
  with equal configs are equal and hash equally (a jit static argument), and
  ``opt.replace(**changes)`` returns a new optimizer.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_nadam.keras import Nadam
    >>> opt = Nadam(learning_rate=0.01, clipnorm=1.0)
    >>> params = [jnp.ones(3)]
    >>> state = opt.init(params)
    >>> params, state = opt.apply_gradients([(jnp.ones(3), params[0])], state)
    >>> int(opt.iterations(state)), round(float(params[0][0]), 4)
    (1, 0.9894)

  Args:
    learning_rate: a float in [0, 1.8e19], an optax schedule ``step -> lr``,
      or a Keras schedule config dict (``{"class_name": "ExponentialDecay",
      "config": {...}}``; ExponentialDecay, InverseTimeDecay,
      PiecewiseConstantDecay, PolynomialDecay, CosineDecay). Schedules see the
      real step count.
    beta_1: momentum coefficient, in [0, 1).
    beta_2: second-moment decay, in [0, 1).
    epsilon: added to the denominator, in [0, 3.4e38].
    name: a name, kept in the config.
    schedule_decay: psi of the momentum schedule, in [0, 3.4e38] (0.004:
      tf-keras legacy; 1.0: Keras 3).
    decay: inverse-time learning-rate decay ``lr / (1 + decay * step)``, as
      tf-keras documents it (tf-keras legacy itself discards it), in [0, 3.4e38].
    clipnorm: per-tensor norm clipping, in (0, 1.8e19]; None for none.
    clipvalue: elementwise clipping, in (0, 3.4e38]; None for none.
    global_clipnorm: global norm clipping, in (0, 1.8e19]; None for none.
    weight_decay: decoupled, ``var -= var * wd * lr``, >= 0 with
      ``learning_rate * weight_decay <= 2``; None for none.
    exclude_from_weight_decay: regexes searched in the "/"-joined leaf paths
      (``"dense/bias"``); matching leaves get no weight decay.
    use_ema: keep an exponential moving average of the params in the state.
    ema_momentum: the EMA's momentum, in [0, 1].
    ema_overwrite_frequency: every this many steps params := EMA, an int in
      [1, 2**31 - 1]; None for never.
    loss_scale_factor: gradients are divided by it (``minimize`` scales the
      loss), a normal float32 in [1.2e-38, 3.4e38]; None for none.
    gradient_accumulation_steps: apply the summed gradients every k calls, an
      int in [1, 2**31 - 1]; None for none.
    lr: deprecated alias of learning_rate (a DeprecationWarning).

  Raises:
    TypeError: an unknown keyword (Python names it; there is no ``**kwargs``,
      so `optax.inject_hyperparams` binds every argument) or a value of the
      wrong type.
    ValueError: a value out of range, or clipnorm with global_clipnorm.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    TensorFlow/Keras documentation of `tf.keras.optimizers.Nadam` and
    `keras.optimizers.Optimizer`.
  """

  def __new__(
      cls,
      learning_rate: Union[float, optax.Schedule, Dict[str, Any]] = _DEFAULT.learning_rate,
      beta_1: float = _DEFAULT.beta_1,
      beta_2: float = _DEFAULT.beta_2,
      epsilon: float = _DEFAULT.epsilon,
      name: str = _DEFAULT.name,
      *,
      schedule_decay: float = _DEFAULT.schedule_decay,
      decay: float = _DEFAULT.decay,
      clipnorm: Optional[float] = _DEFAULT.clipnorm,
      clipvalue: Optional[float] = _DEFAULT.clipvalue,
      global_clipnorm: Optional[float] = _DEFAULT.global_clipnorm,
      weight_decay: Optional[float] = _DEFAULT.weight_decay,
      exclude_from_weight_decay: Sequence[str] = _DEFAULT.exclude_from_weight_decay,
      use_ema: bool = _DEFAULT.use_ema,
      ema_momentum: float = _DEFAULT.ema_momentum,
      ema_overwrite_frequency: Optional[int] = _DEFAULT.ema_overwrite_frequency,
      loss_scale_factor: Optional[float] = _DEFAULT.loss_scale_factor,
      gradient_accumulation_steps: Optional[int] = _DEFAULT.gradient_accumulation_steps,
      lr: Optional[float] = None,
  ) -> "Nadam":
    kwargs = dict(
        learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name,
        schedule_decay=schedule_decay, decay=decay, clipnorm=clipnorm, clipvalue=clipvalue,
        global_clipnorm=global_clipnorm, weight_decay=weight_decay,
        exclude_from_weight_decay=exclude_from_weight_decay, use_ema=use_ema,
        ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps)
    if lr is not None:
      kwargs["lr"] = lr
    return cls._create(NadamConfig.create(**kwargs))

  def replace(self, **changes: Any) -> "Nadam":
    """A new `Nadam` with `changes` applied to this one's arguments (validated again).

    Args:
      **changes: `Nadam` keyword arguments.

    Returns:
      The new optimizer; this one is unchanged.
    """
    return type(self)(**{**self.config.kwargs(), **changes})

  def exclude_from_weight_decay(self, var_list: Optional[Sequence[Any]] = None,
                                var_names: Optional[Sequence[str]] = None) -> None:
    """Refused: pass ``exclude_from_weight_decay=[...]`` to the constructor.

    Keras 3 changes its optimizer in place here; this optimizer is immutable
    (its ``init``/``update`` are pure functions of a frozen config), and a
    method returning a changed copy would be silently ignored by code written
    for Keras, which calls it for its side effect. So it raises with the fix.

    Args:
      var_list: not supported (jax arrays have no identity); use var_names.
      var_names: the regexes.

    Raises:
      TypeError: always, saying what to write instead.
    """
    if var_list:
      raise TypeError("exclude_from_weight_decay: var_list is not supported (jax arrays have "
                      "no identity); pass var_names, regexes searched in the leaf paths.")
    names = list(var_names or [])
    raise TypeError(
        "Nadam is immutable, so exclude_from_weight_decay() cannot change it. Pass the names "
        f"to the constructor, Nadam(..., exclude_from_weight_decay={names!r}), or rebind: "
        f"opt = opt.replace(exclude_from_weight_decay={names!r}).")

  # ------------------------------------------------------------------ config
  def get_config(self) -> Dict[str, Any]:
    """The constructor arguments as JSON-serialisable plain data.

    Always writes ``schedule_decay`` (psi) and ``decay`` (learning-rate
    decay), so `from_config` never has to guess.

    Returns:
      A dict; ``Nadam.from_config(opt.get_config())`` rebuilds the optimizer.

    Raises:
      TypeError: the learning rate is a Python callable (use a Keras
        schedule config dict to serialise a schedule).
    """
    lr = self.config.learning_rate
    if callable(lr) and not isinstance(lr, KerasSchedule):
      raise TypeError("get_config: learning_rate is a Python callable, which a config cannot "
                      "hold; pass a Keras schedule config dict instead.")
    return copy.deepcopy(self.config.kwargs())

  @classmethod
  def from_config(cls, config: Dict[str, Any]) -> "Nadam":
    """Builds a Nadam from our config or one written by tf-keras or Keras 3.

    psi (``schedule_decay``): ``schedule_decay`` if present (our configs);
    else 1.0 if the config has Keras 3 / tf-keras keys such as ``use_ema``;
    else ``decay`` if present (tf-keras legacy stores psi there; then there is
    no learning-rate decay); else 0.004.

    Args:
      config: a dict of plain values (never evaluated or unpickled).

    Returns:
      A `Nadam`.

    Raises:
      ValueError: unknown key or value out of range (naming the key).
      TypeError: a value of the wrong type (naming the key).
    """
    return cls(**_keras_config.from_peer_config(config))

  def __reduce__(self):
    return (_from_config_object, (self.config,))

  def __repr__(self) -> str:
    shown = {k: v for k, v in self.config.kwargs().items()
             if v != _keras_config.DEFAULTS.get(k)}
    return "Nadam(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


# Static pytree: the optimizer is configuration, not data, so `jax.jit` and
# `flax.nnx` take it as a hashable constant instead of flattening its functions.
jax.tree_util.register_static(Nadam)
