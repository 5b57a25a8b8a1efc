"""`Nadam`: the Keras optimizer API (tf-keras legacy and Keras 3) as an optax optimizer.

One immutable class: a frozen `NadamConfig` (``opt.config``), its optax
``init``/``update`` (``build(config)``, in `optax_nadam.keras.build`), and the
Keras methods as pure functions of an explicit state (their state work is in
`optax_nadam.keras.state`). The Nadam math is `optax_nadam.transform.scale_by_nadam`.
"""

import copy
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import chex
import jax
import optax

from optax_nadam.keras import build as _build
from optax_nadam.keras import config as _keras_config
from optax_nadam.keras import state as _state
from optax_nadam.keras.build import KerasNadamState
from optax_nadam.keras.config import NadamConfig
from optax_nadam.keras.schedules import KerasSchedule

__all__ = ["KerasNadamState", "Nadam", "NadamConfig"]

# The defaults are written once, as `NadamConfig`'s field defaults.
_DEFAULT = NadamConfig()
LearningRate = Union[float, optax.Schedule, Dict[str, Any]]


class Nadam(optax.GradientTransformationExtraArgs):
  """NAdam with the Keras optimizer API, as an optax `GradientTransformation`.

  **Pick the trajectory.** ``Nadam(...)`` is tf-keras legacy's Nadam (and
  torch's NAdam): the momentum schedule ``schedule_decay=0.004``. Keras 3's
  ``keras.optimizers.Nadam`` runs ``schedule_decay=1.0``; for it write
  ``Nadam.keras3(...)``, which takes Keras 3's arguments. The two
  trajectories differ by far more than rounding (the README's table).

  The arguments are tf-keras legacy's with Keras 3's extras. The optimizer is
  an immutable value: two with equal configs are equal and hash equally (a
  `jax.jit` static argument); ``opt.replace(**changes)`` returns a new one.
  ``init``/``update`` plug into `optax.chain`, `flax.nnx.Optimizer` and
  `optax.inject_hyperparams`; the Keras methods take and return the state.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_nadam.keras import Nadam
    >>> opt = Nadam(learning_rate=0.01, schedule_decay=0.004, clipnorm=1.0)  # tf-keras legacy
    >>> params = [jnp.ones(3)]
    >>> state = opt.init(params)
    >>> params, state = opt.apply_gradients([(jnp.ones(3), params[0])], state)
    >>> int(opt.iterations(state)), round(float(params[0][0]), 4)
    (1, 0.9894)
    >>> Nadam.keras3(learning_rate=0.01).config.schedule_decay  # Keras 3
    1.0

  Each argument's range, and why, is in docs/reliability.md; a value out of it
  is refused naming the argument.

  Args:
    learning_rate: a float, an optax schedule ``step -> lr``, or a Keras
      schedule config dict (``{"class_name": "ExponentialDecay", "config":
      {...}}``); schedules see the real step count.
    beta_1, beta_2, epsilon: as in Keras.
    name: a name, kept in the config.
    schedule_decay: psi of the momentum schedule (0.004: tf-keras legacy,
      torch; 1.0: Keras 3).
    decay: inverse-time learning-rate decay ``lr / (1 + decay * step)``, as
      tf-keras documents it (tf-keras legacy itself discards it).
    clipnorm, clipvalue, global_clipnorm: per-tensor norm, elementwise and
      global norm clipping; None for none.
    weight_decay: decoupled, ``var -= var * wd * lr``; None for none.
    exclude_from_weight_decay: regexes searched in the "/"-joined leaf paths
      (``"dense/bias"``); matching leaves get no weight decay.
    use_ema, ema_momentum: keep an exponential moving average of the params
      in the state.
    ema_overwrite_frequency: every this many steps params := EMA; None: never.
    loss_scale_factor: gradients are divided by it (``minimize`` scales the
      loss); None for none.
    gradient_accumulation_steps: apply the summed gradients every k calls.
    lr: deprecated alias of learning_rate (a DeprecationWarning).

  Raises:
    TypeError: an unknown keyword (there is no ``**kwargs``, so
      `optax.inject_hyperparams` binds every argument) or a value of the wrong type.
    ValueError: a value out of range, or clipnorm with global_clipnorm.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    TensorFlow/Keras documentation of `tf.keras.optimizers.Nadam` and
    `keras.optimizers.Optimizer`.
  """

  config: NadamConfig

  def __new__(
      cls,
      learning_rate: LearningRate = _DEFAULT.learning_rate,
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
    kwargs = {k: v for k, v in locals().items() if k not in ("cls", "lr", "__class__")}
    if lr is not None:
      kwargs["lr"] = lr
    return cls._create(NadamConfig.create(**kwargs))

  @classmethod
  def keras3(
      cls,
      learning_rate: LearningRate = _DEFAULT.learning_rate,
      beta_1: float = _DEFAULT.beta_1,
      beta_2: float = _DEFAULT.beta_2,
      epsilon: float = _DEFAULT.epsilon,
      weight_decay: Optional[float] = None,
      clipnorm: Optional[float] = None,
      clipvalue: Optional[float] = None,
      global_clipnorm: Optional[float] = None,
      use_ema: bool = False,
      ema_momentum: float = _DEFAULT.ema_momentum,
      ema_overwrite_frequency: Optional[int] = None,
      loss_scale_factor: Optional[float] = None,
      gradient_accumulation_steps: Optional[int] = None,
      name: str = "nadam",
      *,
      exclude_from_weight_decay: Sequence[str] = (),
  ) -> "Nadam":
    """Keras 3's ``keras.optimizers.Nadam(...)``: its arguments, order and defaults, psi = 1.

    ``schedule_decay=1.0`` (Keras 3 dropped the seed's 0.004). Keras 3 has no
    ``decay`` or ``schedule_decay`` argument, so neither is taken here.
    ``exclude_from_weight_decay`` replaces Keras 3's in-place method of that name.

    Returns:
      A `Nadam` equal to ``Nadam(..., schedule_decay=1.0)`` with these arguments.
    """
    kwargs = {k: v for k, v in locals().items() if k not in ("cls", "__class__")}
    return cls(schedule_decay=1.0, **kwargs)

  @classmethod
  def _create(cls, config: NadamConfig) -> "Nadam":
    """The optimizer of a validated `config`: ``build(config)``'s init/update, carrying it."""
    if not isinstance(config, NadamConfig):
      raise TypeError(f"config must be a NadamConfig, got {type(config).__name__}.")
    tx = _build.build(config)
    self = super().__new__(cls, tx.init, tx.update)
    object.__setattr__(self, "config", config)
    return self

  def replace(self, **changes: Any) -> "Nadam":
    """A new `Nadam` with `changes` applied to this one's arguments (validated again)."""
    return type(self)(**{**self.config.kwargs(), **changes})

  # ------------------------------------------------------------------ a value
  def __setattr__(self, key: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is immutable (cannot set {key!r}); use "
                         "opt.replace(...) to get a changed optimizer.")

  # Not NotImplemented for other types: Python would then fall back to tuple
  # equality, which compares the (init, update) closures.
  def __eq__(self, other: Any) -> bool:
    return type(self) is type(other) and self.config == other.config

  def __ne__(self, other: Any) -> bool:  # tuple's own __ne__ would compare the closures
    return not self.__eq__(other)

  def __hash__(self) -> int:
    return hash((type(self), self.config))

  def __reduce__(self):  # pickle and deepcopy: rebuilt from the validated config
    return (type(self)._create, (self.config,))

  def __repr__(self) -> str:
    shown = {k: v for k, v in self.config.kwargs().items()
             if v != _keras_config.DEFAULTS.get(k)}
    return "Nadam(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

  # ------------------------------------------------------------------ config
  def get_config(self) -> Dict[str, Any]:
    """The arguments as plain JSON data; always with ``schedule_decay`` and ``decay``.

    Raises:
      TypeError: the learning rate is a Python callable (pass a Keras schedule
        config dict to serialise a schedule).
    """
    lr = self.config.learning_rate
    if callable(lr) and not isinstance(lr, KerasSchedule):
      raise TypeError("get_config: learning_rate is a Python callable, which a config cannot "
                      "hold; pass a Keras schedule config dict instead.")
    return copy.deepcopy(self.config.kwargs())

  @classmethod
  def from_config(cls, config: Dict[str, Any]) -> "Nadam":
    """A Nadam from our config or one written by tf-keras legacy, tf-keras or Keras 3.

    psi: ``schedule_decay`` if present; else 1.0 for a Keras 3 / tf-keras
    config (keys such as ``use_ema``); else ``decay`` (where tf-keras legacy
    stores psi; then no learning-rate decay); else 0.004. See docs/keras.md.

    Raises:
      ValueError: unknown key or value out of range (naming the key).
      TypeError: a value of the wrong type (naming the key).
    """
    return cls(**_keras_config.from_peer_config(config))

  # ------------------------------------------------------------ Keras methods
  def iterations(self, state: Any) -> chex.Array:
    """Update steps taken (int32; with accumulation, Keras 3's floored count)."""
    return _state.find_nadam_state(state).count

  def current_learning_rate(self, state: Any) -> chex.Array:
    """The learning rate the next update uses (schedule and ``decay`` applied)."""
    return _build.learning_rate(self.config, _build.real_step(self.config, state),
                                _state.find_nadam_state(state).mu_product.dtype)

  def get_slot_names(self) -> Tuple[str, str]:
    """``("m", "v")``, as tf-keras legacy Nadam."""
    return ("m", "v")

  def get_slot(self, state: Any, var: Union[int, str], slot_name: str) -> chex.Array:
    """Slot ``"m"`` or ``"v"`` of `var`: a leaf index or path (``"dense/kernel"`` or keystr).

    Raises:
      ValueError: unknown slot name, index or path.
    """
    return _state.slot(state, var, slot_name)

  def get_weights(self, state: Any) -> list:
    """tf-keras legacy's ``get_weights()``: ``[iterations (int64), mu_product, m..., v...]``."""
    return _state.weights_from_state(state)

  def set_weights(self, state: Any, weights: Sequence[Any]) -> Any:
    """`state` with a tf-keras legacy ``get_weights()`` list loaded (accumulators zeroed).

    Raises:
      ValueError: wrong count or shape (naming the index).
      TypeError: wrong dtype kind (naming the index).
    """
    return _state.weights_into_state(state, weights)

  def variables(self, state: Any) -> list:
    """Every state array: ``get_weights`` order, then accumulators, then the EMA."""
    return _state.variables(state)

  def apply_gradients(self, grads_and_vars, state: Any):
    """One step on ``(gradient, variable)`` pairs; returns ``(new_vars, new_state)``.

    ``grads_and_vars`` is a sequence of pairs or a ``{name: (grad, var)}``
    dict (the names are what ``exclude_from_weight_decay`` matches); new_vars
    has its form. A None gradient leaves its variable and slots as they are
    (Keras's behaviour); the step still counts.

    Raises:
      TypeError: malformed ``grads_and_vars``.
      ValueError: every gradient is None, or a gradient's shape is not its variable's.
    """
    grads, params, present = _state.split_pairs(grads_and_vars)
    new_params, new_state, _ = _build.jitted_step(self.config, grads, state, params, present)
    return new_params, new_state

  def get_gradients(self, loss_fn, params: optax.Params) -> optax.Updates:
    """Raw gradients of ``loss_fn(params)`` (clipping is part of the update)."""
    return jax.grad(loss_fn)(params)

  def _scaled_grads(self, loss_fn, params):
    # Keras 3 scales the loss up before differentiating; the update divides it back.
    scale = self.config.loss_scale_factor or 1.0
    return jax.grad(lambda p: loss_fn(p) * scale)(params)

  def get_updates(self, loss_fn, params: optax.Params, state: Any):
    """``(updates, new_state)`` of one step on ``loss_fn`` (tf-keras ``get_updates``, pure)."""
    _, new_state, updates = _build.jitted_step(
        self.config, self._scaled_grads(loss_fn, params), state, params)
    return updates, new_state

  def minimize(self, loss_fn, params: optax.Params, state: Any):
    """``(new_params, new_state)`` after one step on ``loss_fn`` (loss scaled); pure."""
    new_params, new_state, _ = _build.jitted_step(
        self.config, self._scaled_grads(loss_fn, params), state, params)
    return new_params, new_state

  def exclude_from_weight_decay(self, var_list: Optional[Sequence[Any]] = None,
                                var_names: Optional[Sequence[str]] = None) -> None:
    """Refused with the fix: Keras 3 changes its optimizer here, and this one is immutable.

    A method returning a changed copy would be silently ignored by code written
    for Keras, which calls it for its side effect.

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


# Static pytree: the optimizer is configuration, not data, so `jax.jit` and
# `flax.nnx` take it as a hashable constant instead of flattening its functions.
jax.tree_util.register_static(Nadam)
