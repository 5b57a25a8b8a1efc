"""`KerasMethods`: an optax transformation that is the value of a `NadamConfig` (private).

The base class of `optax_nadam.keras.Nadam`. `KerasMethods._create(config)` is
the only constructor: it builds the transformation (``build(config)``) and
stores ``config``, the one attribute everything here reads. Two objects are
equal, and hash equally, when their types and configs are equal, so
`jax.jit` traces once for equal optimizers passed as a static argument.
Every Keras method is pure (the state goes in and comes back out) and
computes through `optax_nadam.keras.build`.
"""

import warnings
from typing import Any, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam.keras import build as _build
from optax_nadam.keras.config import NadamConfig
from optax_nadam.keras.state import (
    find_nadam_state,
    leaf_names,
    weights_from_state,
    weights_into_state,
)


class KerasMethods(optax.GradientTransformationExtraArgs):
  """The optax transformation of a frozen `NadamConfig`, with the Keras methods.

  A value: it is immutable, equal to another when both have the same type and
  equal configs (a Python callable learning rate compares by identity), and
  hashed by them. ``init``/``update`` are those of ``build(config)``; the
  tf-keras legacy / Keras 3 methods are pure functions of an explicit state.

  Attributes:
    config: the frozen, validated `NadamConfig` (set once, by `_create`).
  """

  config: NadamConfig

  @classmethod
  def _create(cls, config: NadamConfig) -> "KerasMethods":
    """The optimizer of `config`: ``build(config)``'s init/update, carrying `config`.

    Args:
      config: a validated `NadamConfig`.

    Returns:
      An instance of `cls`.
    """
    if not isinstance(config, NadamConfig):
      raise TypeError(f"config must be a NadamConfig, got {type(config).__name__}.")
    tx = _build.build(config)
    self = super().__new__(cls, tx.init, tx.update)
    object.__setattr__(self, "config", config)
    return self

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

  def iterations(self, state: Any) -> chex.Array:
    """Keras's ``optimizer.iterations``: update steps taken (int32 scalar).

    With gradient accumulation this is Keras 3's floored count, the number of
    applied (not accumulated) steps.

    Args:
      state: this optimizer's state.

    Returns:
      An int32 scalar.
    """
    return find_nadam_state(state).count

  def current_learning_rate(self, state: Any) -> chex.Array:
    """The learning rate the next update will use (schedule and decay applied).

    Args:
      state: this optimizer's state.

    Returns:
      A float32 scalar (float64 for float64 params under x64).
    """
    return _build.learning_rate(self.config, _build.real_step(self.config, state),
                                find_nadam_state(state).mu_product.dtype)

  def get_slot_names(self) -> Tuple[str, str]:
    """The slot names, ``("m", "v")``, as tf-keras legacy Nadam.

    Returns:
      ``("m", "v")``.
    """
    return ("m", "v")

  def get_slot(self, state: Any, var: Union[int, str], slot_name: str) -> chex.Array:
    """A slot (first or second moment) of one parameter.

    Args:
      state: this optimizer's state.
      var: the parameter's index among the leaves, or its path (``"dense/kernel"``
        or jax's keystr form ``"['dense']['kernel']"``).
      slot_name: ``"m"`` or ``"v"``.

    Returns:
      The slot array.

    Raises:
      ValueError: unknown slot name, index or path.
    """
    if slot_name not in self.get_slot_names():
      raise ValueError(f"get_slot: slot_name must be 'm' or 'v', got {slot_name!r}.")
    nadam = find_nadam_state(state)
    tree = nadam.m if slot_name == "m" else nadam.v
    leaves = jax.tree.leaves(tree)
    names = leaf_names(tree)
    keystrs = _tree.leaf_paths(tree)
    if isinstance(var, (int, np.integer)) and not isinstance(var, bool):
      if not -len(leaves) <= int(var) < len(leaves):
        raise ValueError(f"get_slot: index {var} out of range for {len(leaves)} parameters.")
      return leaves[int(var)]
    if isinstance(var, str):
      for i, (n, k) in enumerate(zip(names, keystrs)):
        if var in (n, k):
          return leaves[i]
      raise ValueError(f"get_slot: no parameter at path {var!r}; paths: {names}.")
    raise TypeError(f"get_slot: var must be an int index or a path string, got {var!r}.")

  def get_weights(self, state: Any) -> list:
    """The state in tf-keras legacy Nadam's ``get_weights()`` order.

    ``[iterations (int64), momentum cache = mu-product (float32), m..., v...]``,
    numpy arrays, leaves in `jax.tree.leaves` order.

    Args:
      state: this optimizer's state.

    Returns:
      A list of numpy arrays.
    """
    return weights_from_state(state)

  def set_weights(self, state: Any, weights: Sequence[Any]) -> Any:
    """Returns `state` with tf-keras legacy ``get_weights()`` values loaded.

    Sets the step count, the mu-product and the moments; the real step count
    becomes ``iterations * gradient_accumulation_steps`` (accumulators zeroed).

    Args:
      state: a state of this optimizer (gives the structure, shapes, dtypes).
      weights: ``[iterations, mu_product, m..., v...]``.

    Returns:
      The new state.

    Raises:
      ValueError: wrong count or shape (naming the index).
      TypeError: wrong dtype kind (naming the index).
    """
    return weights_into_state(state, weights)

  def variables(self, state: Any) -> list:
    """All state arrays: ``get_weights`` order, then accumulators, then EMA.

    Args:
      state: this optimizer's state.

    Returns:
      A list of jax arrays: iterations, mu-product, m..., v..., then the
      gradient accumulators (when gradient_accumulation_steps > 1), then the
      parameter averages (when use_ema).
    """
    nadam = find_nadam_state(state)
    out = [nadam.count, nadam.mu_product, *jax.tree.leaves(nadam.m), *jax.tree.leaves(nadam.v)]
    for _, node in _tree.find_nodes(state.core, optax.MultiStepsState):
      out += jax.tree.leaves(node.acc_grads)
    return out + jax.tree.leaves(state.ema)

  def apply_gradients(self, grads_and_vars, state: Any):
    """Applies one step to ``(gradient, variable)`` pairs; pure.

    ``grads_and_vars`` is a sequence of pairs (the variables form a list, as
    in `init([v for _, v in pairs])`) or a dict ``{name: (grad, var)}`` (the
    variables form that dict; names are the paths weight-decay exclusions
    match). A None gradient skips its variable: it and its slots stay as they
    are (Keras's behaviour); the step still counts.

    Args:
      grads_and_vars: the pairs.
      state: this optimizer's state, from `init` on the same variables.

    Returns:
      ``(new_vars, new_state)``; new_vars is a list or dict like the input.

    Raises:
      TypeError: malformed ``grads_and_vars``.
      ValueError: every gradient is None ("No gradients provided for any
        variable."), or a gradient's shape differs from its variable's.
    """
    if isinstance(grads_and_vars, dict):
      keys = list(grads_and_vars)
      pairs = list(grads_and_vars.values())
      labels = [str(k) for k in keys]
    else:
      try:
        pairs = list(grads_and_vars)
      except TypeError:
        raise TypeError("apply_gradients: grads_and_vars must be an iterable of (gradient, "
                        f"variable) pairs, got {type(grads_and_vars).__name__}.") from None
      keys, labels = None, [str(i) for i in range(len(pairs))]
    for label, pair in zip(labels, pairs):
      if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"apply_gradients: grads_and_vars[{label}] must be a (gradient, "
                        f"variable) pair, got {type(pair).__name__}.")
      if not hasattr(pair[1], "shape") or (pair[0] is not None and not hasattr(pair[0], "shape")):
        raise TypeError(f"apply_gradients: grads_and_vars[{label}] must hold arrays, got "
                        f"({type(pair[0]).__name__}, {type(pair[1]).__name__}).")
    present = [g is not None for g, _ in pairs]
    if not any(present):
      raise ValueError("No gradients provided for any variable.")
    for label, (g, v) in zip(labels, pairs):
      if g is not None and jnp.shape(g) != jnp.shape(v):
        raise ValueError(f"apply_gradients: the gradient at grads_and_vars[{label}] has shape "
                         f"{jnp.shape(g)} but its variable has shape {jnp.shape(v)}.")
    if not all(present):
      missing = [lab for lab, p in zip(labels, present) if not p]
      warnings.warn(f"Gradients do not exist for variables {missing}; they are left as they are.",
                    stacklevel=2)
    grads = [jnp.zeros_like(v) if g is None else g for g, v in pairs]
    params = [v for _, v in pairs]
    if keys is not None:
      grads, params, present = (dict(zip(keys, x)) for x in (grads, params, present))
    # A params-shaped tree of flags (traced: every pattern shares one compilation).
    mask = None if all(jax.tree.leaves(present)) else present
    new_params, new_state, _ = _build.jitted_step(self.config, grads, state, params, mask)
    return new_params, new_state

  def get_gradients(self, loss_fn, params: optax.Params) -> optax.Updates:
    """Gradients of ``loss_fn(params)`` (raw: clipping happens in the update).

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the parameters.

    Returns:
      The gradient tree.
    """
    return jax.grad(loss_fn)(params)

  def _scaled_grads(self, loss_fn, params):
    # Keras 3 scales the loss up before differentiating; the update divides it back.
    scale = self.config.loss_scale_factor or 1.0
    return jax.grad(lambda p: loss_fn(p) * scale)(params)

  def get_updates(self, loss_fn, params: optax.Params, state: Any):
    """The optax updates one step would make (tf-keras ``get_updates``, pure).

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the parameters.
      state: this optimizer's state.

    Returns:
      ``(updates, new_state)``; apply with `optax.apply_updates`.
    """
    _, new_state, updates = _build.jitted_step(
        self.config, self._scaled_grads(loss_fn, params), state, params)
    return updates, new_state

  def minimize(self, loss_fn, params: optax.Params, state: Any):
    """One step on ``loss_fn``: differentiate (loss scaled), update; pure.

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the parameters.
      state: this optimizer's state.

    Returns:
      ``(new_params, new_state)``.
    """
    new_params, new_state, _ = _build.jitted_step(
        self.config, self._scaled_grads(loss_fn, params), state, params)
    return new_params, new_state
