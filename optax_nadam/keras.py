"""`Nadam`: the Keras optimizer API (tf-keras legacy and Keras 3) as an optax optimizer.

`Nadam(...)` *is* an `optax.GradientTransformationExtraArgs` (``init`` and
``update`` plug into `optax.chain`, `flax.nnx.Optimizer` and `jax.jit`) and
offers the Keras methods as pure functions of an explicit state:
``iterations(state)``, ``get_slot``, ``get_weights``/``set_weights``,
``apply_gradients(grads_and_vars, state) -> (new_vars, new_state)``,
``minimize``, ``get_config``/``from_config`` and so on. The Nadam math is
`optax_nadam.transform.scale_by_nadam`; this module only composes optax pieces
around it.

One update, in Keras 3's order (tf-keras legacy's where Keras 3 has none)::

  g / loss_scale_factor                      optax.scale
  accumulate k steps: (g + acc) / k          optax.MultiSteps (sum) + optax.scale(1/k)
    clipvalue -> clipnorm (per tensor) -> global_clipnorm
    scale_by_nadam(momentum_decay=schedule_decay)
    + weight_decay * param (decoupled, masked by exclude_from_weight_decay)
  * -lr(step), lr(step) = schedule(step) / (1 + decay * step)
  EMA of the new params; every ema_overwrite_frequency steps params := EMA

State layout (what `init` returns), for tools such as
`optax_nadam.interop.state_from_keras` that search it::

  KerasNadamState(
    core=(ScaleState, [MultiStepsState(inner_opt_state=](ScaleState,) clip
          states..., ScaleByNadamState, [MaskedState(AddDecayedWeightsState)]
          [)]),
    ema=<params-shaped tree of averages> | optax.EmptyState())

There is exactly one `ScaleByNadamState` in the tree. It also holds the step
count: ``iterations(state)`` is its ``count`` (Keras 3's floored
``iterations``), and the real number of update calls (what learning-rate
schedules and ``decay`` see, as in Keras 3) is ``count * k + mini_step`` with
k = gradient_accumulation_steps and ``mini_step`` of the `optax.MultiStepsState`
(0 without accumulation). So replacing the `ScaleByNadamState` alone imports
a peer's whole progress.

Config psi rule (``from_config``): ``schedule_decay`` present -> psi = it and
``decay`` is learning-rate decay; else a Keras 3 / tf-keras key (``use_ema``...)
-> psi = 1.0; else ``decay`` present (tf-keras legacy writes its schedule_decay
there) -> psi = decay, no learning-rate decay; else psi = 0.004.
"""

import copy
import re
import warnings
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _keras_config, _keras_schedules
from optax_nadam._keras_state import (
    find_nadam_state,
    leaf_names,
    map_special_nodes,
    weights_from_state,
    weights_into_state,
)
from optax_nadam.transform import scale_by_nadam

__all__ = ["KerasNadamState", "Nadam"]


class KerasNadamState(NamedTuple):
  """State of `Nadam`: the optax chain's state and the EMA of the params."""

  core: optax.OptState  # holds exactly one ScaleByNadamState
  ema: Any  # params-shaped averages when use_ema, else optax.EmptyState()


def _clip_by_tensor_norm(clipnorm: float) -> optax.GradientTransformation:
  """Per-tensor norm clipping, ``g * c / max(||g||, c)`` as tf.clip_by_norm."""

  def clip(g):
    l2sum = jnp.sum(jnp.real(g * jnp.conj(g)))
    positive = l2sum > 0
    # The two-sided where keeps a NaN-free gradient at norm 0 (as TF does).
    l2norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, l2sum, 1.0)), l2sum)
    return ((g * clipnorm) / jnp.maximum(l2norm, clipnorm)).astype(g.dtype)

  return optax.stateless(lambda updates, params: jax.tree.map(clip, updates))


def _rebuild(kwargs: Dict[str, Any]) -> "Nadam":
  return Nadam(**kwargs)


class Nadam(optax.GradientTransformationExtraArgs):
  """NAdam with the Keras optimizer API, as an optax `GradientTransformation`.

  The arguments are `tf.keras.optimizers.Nadam`'s (tf-keras legacy) with
  Keras 3's extras. Defaults follow tf-keras legacy, i.e. the seed's NAdam with
  momentum schedule ``psi = schedule_decay = 0.004``; pass
  ``schedule_decay=1.0`` for Keras 3's trajectory.

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
    learning_rate: a float >= 0, an optax schedule ``step -> lr``, or a Keras
      schedule config dict (``{"class_name": "ExponentialDecay", "config":
      {...}}``; ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay,
      PolynomialDecay, CosineDecay). Schedules see the real step count.
    beta_1: momentum coefficient, in [0, 1).
    beta_2: second-moment decay, in [0, 1).
    epsilon: added to the denominator, >= 0.
    name: a name, kept in the config.
    **kwargs: ``lr`` (deprecated alias of learning_rate), ``schedule_decay``
      (psi, default 0.004), ``decay`` (inverse-time learning-rate decay
      ``lr / (1 + decay * step)``, as tf-keras documents it; tf-keras legacy
      itself discards it), ``clipvalue``, ``clipnorm`` (per tensor),
      ``global_clipnorm``, ``weight_decay`` (decoupled, ``var -= var * wd *
      lr``), ``exclude_from_weight_decay`` (regexes searched in leaf paths),
      ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
      ``loss_scale_factor``, ``gradient_accumulation_steps``.

  Raises:
    TypeError: an unknown keyword (named) or a value of the wrong type.
    ValueError: a value out of range, or clipnorm with global_clipnorm.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    TensorFlow/Keras documentation of `tf.keras.optimizers.Nadam` and
    `keras.optimizers.Optimizer`.
  """

  def __new__(
      cls,
      learning_rate: Union[float, optax.Schedule, Dict[str, Any]] = 0.001,
      beta_1: float = 0.9,
      beta_2: float = 0.999,
      epsilon: float = 1e-07,
      name: str = "Nadam",
      **kwargs: Any,
  ) -> "Nadam":
    ctor = dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                epsilon=epsilon, name=name, **kwargs)
    config = _keras_config.normalize(ctor)
    self_ref = []
    self = super().__new__(
        cls,
        lambda params: self_ref[0]._init(params),
        lambda updates, state, params=None, **extra: self_ref[0]._update(
            updates, state, params),
    )
    self_ref.append(self)
    self._ctor = ctor
    self._config = config
    self._built = False
    self._k = config["gradient_accumulation_steps"] or 1
    lr = config["learning_rate"]
    if isinstance(lr, dict):
      self._schedule = _keras_schedules.from_keras_config(lr)
    else:
      self._schedule = lr if callable(lr) else None
    self._core = self._build_core()
    self._jit_step = jax.jit(self._step, static_argnums=(3,))
    return self

  # ---------------------------------------------------------------- composition
  def _build_core(self) -> optax.GradientTransformation:
    c = self._config
    inner = []
    if self._k > 1:
      inner.append(optax.scale(1.0 / self._k))
    if c["clipvalue"] is not None:
      inner.append(optax.clip(c["clipvalue"]))
    if c["clipnorm"] is not None:
      inner.append(_clip_by_tensor_norm(c["clipnorm"]))
    if c["global_clipnorm"] is not None:
      inner.append(optax.clip_by_global_norm(c["global_clipnorm"]))
    inner.append(scale_by_nadam(c["beta_1"], c["beta_2"], c["epsilon"],
                                momentum_decay=c["schedule_decay"]))
    if c["weight_decay"]:
      inner.append(optax.add_decayed_weights(c["weight_decay"], self._decay_mask))
    inner = optax.chain(*inner)
    if self._k > 1:
      inner = optax.MultiSteps(inner, self._k, use_grad_mean=False).gradient_transformation()
    scale = 1.0 / c["loss_scale_factor"] if c["loss_scale_factor"] else 1.0
    return optax.chain(optax.scale(scale), inner)

  def _decay_mask(self, params):
    patterns = self._config["exclude_from_weight_decay"]
    if not patterns:
      return jax.tree.map(lambda _: True, params)
    regex = re.compile("|".join(patterns))
    names = leaf_names(params)
    flags = [regex.search(n) is None for n in names]
    return jax.tree.unflatten(jax.tree.structure(params), flags)

  def exclude_from_weight_decay(self, var_list: Optional[Sequence[Any]] = None,
                                var_names: Optional[Sequence[str]] = None) -> None:
    """Excludes parameters whose path matches any of `var_names` from weight decay.

    Keras 3's method; a leaf's path is its keys joined by "/" (``{"dense":
    {"bias": b}}`` -> ``"dense/bias"``, a list's leaves are ``"0"``, ``"1"``...)
    and each name is a regex searched in it (so ``"bias"`` excludes every bias).
    Must be called before `init`, like Keras before ``build``.

    Args:
      var_list: not supported (jax arrays have no identity); use var_names.
      var_names: strings or regexes.

    Returns:
      None.

    Raises:
      TypeError: var_list given, or var_names not a list of strings.
      ValueError: called after `init`.
    """
    if var_list:
      raise TypeError("exclude_from_weight_decay: var_list is not supported (jax arrays have "
                      "no identity); pass var_names, regexes searched in the leaf paths.")
    if self._built:
      raise ValueError("exclude_from_weight_decay() can only be configured before init().")
    names = list(var_names or [])
    _keras_config.normalize({"exclude_from_weight_decay": names})
    self._config["exclude_from_weight_decay"] = names
    self._ctor["exclude_from_weight_decay"] = names

  # ------------------------------------------------------------ optax interface
  def _init(self, params: optax.Params) -> KerasNadamState:
    self._built = True
    ema = optax.EmptyState()
    if self._config["use_ema"]:
      ema = jax.tree.map(jnp.array, params)
    return KerasNadamState(self._core.init(params), ema)

  def _real_step(self, state: KerasNadamState) -> chex.Array:
    nadam = find_nadam_state(state)
    step = nadam.count
    if self._k > 1:
      multi = [s for s in jax.tree.leaves(
          state.core, is_leaf=lambda x: isinstance(x, optax.MultiStepsState))
          if isinstance(s, optax.MultiStepsState)][0]
      step = step * self._k + multi.mini_step
    return step

  def _learning_rate(self, step: chex.Array) -> chex.Array:
    lr = self._schedule(step) if self._schedule else self._config["learning_rate"]
    lr = jnp.asarray(lr, jnp.float32)
    if self._config["decay"]:
      lr = lr / (1.0 + jnp.float32(self._config["decay"]) * jnp.asarray(step, jnp.float32))
    return lr

  def _step(self, grads, state: KerasNadamState, params, present: Optional[Tuple[bool, ...]]):
    """One update: returns (new_params or None, new_state, updates)."""
    c = self._config
    if params is None and (c["weight_decay"] or c["use_ema"]):
      raise ValueError("Nadam.update needs `params` when weight_decay or use_ema is set.")
    step = self._real_step(state)
    lr = self._learning_rate(step)
    updates, core = self._core.update(grads, state.core, params)
    if present is not None:
      def keep(new, old):
        new_l, treedef = jax.tree.flatten(new)
        old_l = jax.tree.leaves(old)
        return jax.tree.unflatten(
            treedef, [n if p else o for n, o, p in zip(new_l, old_l, present)])
      core = map_special_nodes(core, state.core, keep)
      updates = keep(updates, jax.tree.map(jnp.zeros_like, updates))
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    new_params = None if params is None else optax.apply_updates(params, updates)
    ema = state.ema
    if c["use_ema"]:
      floor_iter = step // self._k
      momentum = jnp.where(floor_iter != 0, jnp.float32(c["ema_momentum"]), 0.0)
      ema = jax.tree.map(lambda a, p: (momentum * a + (1 - momentum) * p).astype(a.dtype),
                         state.ema, new_params)
      if c["ema_overwrite_frequency"]:
        overwrite = (floor_iter + 1) % c["ema_overwrite_frequency"] == 0
        new_params = jax.tree.map(lambda a, p: jnp.where(overwrite, a, p), ema, new_params)
        updates = jax.tree.map(
            lambda n, p, u: jnp.where(overwrite, (n - p).astype(u.dtype), u),
            new_params, params, updates)
    return new_params, KerasNadamState(core, ema), updates

  def _update(self, updates, state, params=None):
    _, new_state, updates = self._step(updates, state, params, None)
    return updates, new_state

  # -------------------------------------------------------- Keras methods (pure)
  def iterations(self, state: KerasNadamState) -> chex.Array:
    """Keras's ``optimizer.iterations``: update steps taken (int32 scalar).

    With gradient accumulation this is Keras 3's floored count, the number of
    applied (not accumulated) steps.

    Args:
      state: this optimizer's state.

    Returns:
      An int32 scalar.
    """
    return find_nadam_state(state).count

  def current_learning_rate(self, state: KerasNadamState) -> chex.Array:
    """The learning rate the next update will use (schedule and decay applied).

    Args:
      state: this optimizer's state.

    Returns:
      A float32 scalar.
    """
    return self._learning_rate(self._real_step(state))

  def get_slot_names(self) -> Tuple[str, str]:
    """The slot names, ``("m", "v")``, as tf-keras legacy Nadam.

    Returns:
      ``("m", "v")``.
    """
    return ("m", "v")

  def get_slot(self, state: KerasNadamState, var: Union[int, str], slot_name: str) -> chex.Array:
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
    keystrs = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
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

  def get_weights(self, state: KerasNadamState) -> list:
    """The state in tf-keras legacy Nadam's ``get_weights()`` order.

    ``[iterations (int64), momentum cache = mu-product (float32), m..., v...]``,
    numpy arrays, leaves in `jax.tree.leaves` order.

    Args:
      state: this optimizer's state.

    Returns:
      A list of numpy arrays.
    """
    return weights_from_state(state)

  def set_weights(self, state: KerasNadamState, weights: Sequence[Any]) -> KerasNadamState:
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

  def variables(self, state: KerasNadamState) -> list:
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
    for node in jax.tree.leaves(state.core,
                                is_leaf=lambda x: isinstance(x, optax.MultiStepsState)):
      if isinstance(node, optax.MultiStepsState):
        out += jax.tree.leaves(node.acc_grads)
    return out + jax.tree.leaves(state.ema)

  def apply_gradients(self, grads_and_vars, state: KerasNadamState):
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
    present = tuple(g is not None for g, _ in pairs)
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
      grads, params = dict(zip(keys, grads)), dict(zip(keys, params))
      present = tuple(jax.tree.leaves(dict(zip(keys, present))))  # sorted-key leaf order
    new_params, new_state, _ = self._jit_step(
        grads, state, params, None if all(present) else present)
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
    scale = self._config["loss_scale_factor"] or 1.0
    return jax.grad(lambda p: loss_fn(p) * scale)(params)

  def get_updates(self, loss_fn, params: optax.Params, state: KerasNadamState):
    """The optax updates one step would make (tf-keras ``get_updates``, pure).

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the parameters.
      state: this optimizer's state.

    Returns:
      ``(updates, new_state)``; apply with `optax.apply_updates`.
    """
    _, new_state, updates = self._jit_step(self._scaled_grads(loss_fn, params), state, params,
                                           None)
    return updates, new_state

  def minimize(self, loss_fn, params: optax.Params, state: KerasNadamState):
    """One step on ``loss_fn``: differentiate (loss scaled), update; pure.

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the parameters.
      state: this optimizer's state.

    Returns:
      ``(new_params, new_state)``.
    """
    new_params, new_state, _ = self._jit_step(self._scaled_grads(loss_fn, params), state,
                                              params, None)
    return new_params, new_state

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
    if callable(self._config["learning_rate"]):
      raise TypeError("get_config: learning_rate is a Python callable, which a config cannot "
                      "hold; pass a Keras schedule config dict instead.")
    return copy.deepcopy(self._config)

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
    return (_rebuild, (dict(self._ctor),))

  def __repr__(self) -> str:
    shown = {k: v for k, v in self._config.items() if v != _keras_config.DEFAULTS.get(k)}
    return "Nadam(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


# A childless pytree node: jax must not unflatten it as a namedtuple of functions.
jax.tree_util.register_pytree_node(Nadam, lambda opt: ((), opt), lambda opt, _: opt)

