"""`nadam` and `nadamw`: `scale_by_nadam` chained with optax's own pieces."""

from typing import Any, Callable, Optional, Union

import chex
import jax
import numpy as np
import optax

from optax_nadam import _validation
from optax_nadam._tree import path_str as _path_str
from optax_nadam.transform import _scale_by_nadam, scale_by_nadam


def _check_learning_rate(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  if callable(learning_rate):
    return learning_rate
  return _validation.number("learning_rate", learning_rate, _validation.LEARNING_RATE)


def _check_mask(mask: Any) -> Any:
  """None, a callable, or a tree of bools (as `optax.masked` takes)."""
  if mask is None or callable(mask):
    return mask
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
    if not isinstance(leaf, (bool, np.bool_)) and not (
        hasattr(leaf, "dtype") and np.dtype(leaf.dtype) == np.bool_):
      raise TypeError(f"mask must be None, a callable or a tree of bools; the leaf at "
                      f"{_path_str(path)} is {leaf!r}.")
  return mask


def nadam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-7,
    eps_root: chex.Numeric = 0.0,
    momentum_decay: chex.Numeric = 0.004,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""The NAdam optimizer of TF/Keras and PyTorch, as an optax optimizer.

  ``chain(scale_by_nadam(...), scale_by_learning_rate(learning_rate))``, with the
  learning rate applied inside the NAdam step, before the cast to the params' dtype
  (a float16 direction can overflow where the update does not; the state layout is
  that chain's). With
  the defaults it follows `tf.keras.optimizers.Nadam` (tf-keras legacy) and,
  with ``eps=1e-8``, `torch.optim.NAdam`; with ``momentum_decay=1.0`` it
  follows Keras 3's `keras.optimizers.Nadam`. It is not `optax.nadam`, which
  has no momentum schedule.

  Coupled L2 weight decay, torch NAdam's default ``weight_decay``, is
  ``optax.chain(optax.add_decayed_weights(wd), nadam(lr))``; decoupled weight
  decay is `nadamw`.

  Example:
    >>> import jax.numpy as jnp, optax, optax_nadam
    >>> params = {"w": jnp.ones(3)}
    >>> tx = optax_nadam.nadam(1e-2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state)
    >>> round(float(optax.apply_updates(params, updates)["w"][0]), 4)
    0.9894

  Args:
    learning_rate: a float in [0, 1.8e19] (see `Raises`), a jax scalar, or an
      optax schedule (called with the step count before it is incremented,
      like `optax.adam`).
    b1: base momentum coefficient, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator after the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    momentum_decay: ``psi`` of the momentum schedule ``b1 * (1 - 0.5 *
      0.96 ** (psi * t))``; 0.004 is tf-keras legacy's ``schedule_decay`` and
      torch's ``momentum_decay``; 1.0 is Keras 3's Nadam.
    mu_dtype: optional dtype of the first moment (e.g. ``jnp.bfloat16``).

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: a concrete hyperparameter is NaN, infinite or outside its
      range; learning_rate's is [0, sqrt(float32 max) ~ 1.8e19] (the step is
      learning_rate times a direction cut to NAdam's own bound and at most
      2**63, so their product stays finite in float32).
    TypeError: a hyperparameter is not a number (bools and strings included).

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    TensorFlow/Keras documentation of `tf.keras.optimizers.Nadam`.
  """
  learning_rate = _check_learning_rate(learning_rate)
  core = _scale_by_nadam(b1, b2, eps, eps_root, momentum_decay, mu_dtype)
  scale = optax.scale_by_learning_rate(learning_rate)
  chained = optax.chain(core, scale)

  def update_fn(updates, state, params=None, **extra_args):
    # chain(core, scale)'s state; the learning rate (a schedule at scale's own count, as
    # optax evaluates it) multiplies the direction inside core, before the cast.
    del extra_args
    core_state, scale_state = state
    lr = learning_rate(scale_state.count) if callable(learning_rate) else learning_rate
    updates, core_state = core.update(updates, core_state, params, learning_rate=lr)
    if callable(learning_rate):  # only a schedule's state (its count) changes
      scale_state = scale.update(updates, scale_state, params)[1]
    return updates, (core_state, scale_state)

  return optax.GradientTransformationExtraArgs(chained.init, update_fn)


def nadamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-7,
    eps_root: chex.Numeric = 0.0,
    momentum_decay: chex.Numeric = 0.004,
    mu_dtype: Optional[Any] = None,
    weight_decay: chex.Numeric = 1e-4,
    mask: Optional[Union[Any, Callable[[optax.Params], Any]]] = None,
) -> optax.GradientTransformation:
  r"""NAdam with decoupled weight decay (torch ``NAdam(decoupled_weight_decay=True)``).

  Each step shrinks a parameter by ``learning_rate * weight_decay * param`` on
  top of the `nadam` step, the way `optax.adamw` does for Adam:
  ``chain(scale_by_nadam(...), add_decayed_weights(weight_decay, mask),
  scale_by_learning_rate(learning_rate))``. The update needs ``params``.

  Args:
    learning_rate: a float in [0, 1.8e19], a jax scalar, or an optax schedule.
    b1: base momentum coefficient, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator after the square root, >= 0.
    eps_root: added inside the square root, >= 0.
    momentum_decay: ``psi`` of the momentum schedule (see `nadam`).
    mu_dtype: optional dtype of the first moment.
    weight_decay: decoupled decay rate, in [0, 1.8e19] (``weight_decay *
      param`` must stay finite in float32), with ``learning_rate *
      weight_decay <= 2`` when both are numbers (each step multiplies the
      params by ``1 - learning_rate * weight_decay``).
    mask: a tree of booleans like the params, or a callable returning one;
      True where weight decay applies (as in `optax.adamw`).

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: a concrete hyperparameter is NaN, infinite or outside its
      range (see `nadam`), or ``learning_rate * weight_decay > 2``.
    TypeError: a hyperparameter is not a number, or mask is not None, a
      callable or a tree of bools.

  References:
    Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization".
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam".
  """
  learning_rate = _check_learning_rate(learning_rate)
  weight_decay = _validation.number("weight_decay", weight_decay, _validation.WEIGHT_DECAY)
  _validation.decay_product(learning_rate, weight_decay)
  mask = _check_mask(mask)
  return optax.chain(
      scale_by_nadam(b1, b2, eps, eps_root, momentum_decay, mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
