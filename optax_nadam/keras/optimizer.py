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
import inspect
import re
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import optax

from optax_nadam import _tree
from optax_nadam.keras import config as _keras_config
from optax_nadam.keras import schedules as _keras_schedules
from optax_nadam.keras.methods import KerasMethods
from optax_nadam.keras.state import find_nadam_state, leaf_names, map_special_nodes
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


class Nadam(KerasMethods, optax.GradientTransformationExtraArgs):
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
    if c["weight_decay"] is not None:
      inner.append(optax.add_decayed_weights(c["weight_decay"], self._decay_mask))
    inner = optax.chain(*inner)
    if self._k > 1:
      inner = optax.MultiSteps(inner, self._k, use_grad_mean=False).gradient_transformation()
    scale = 1.0 if c["loss_scale_factor"] is None else 1.0 / c["loss_scale_factor"]
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
      multi = _tree.find_one(state.core, optax.MultiStepsState, "pass this optimizer's state.")
      step = step * self._k + multi.mini_step
    return step

  def _learning_rate(self, step: chex.Array, dtype: Any = jnp.float32) -> chex.Array:
    """The learning rate at `step`, in `dtype` (the state's mu-product dtype)."""
    lr = self._schedule(step) if self._schedule else self._config["learning_rate"]
    lr = jnp.asarray(lr, dtype)
    decay = self._config["decay"]
    if not (isinstance(decay, float) and decay == 0.0):  # traced under inject_hyperparams
      lr = lr / (1.0 + jnp.asarray(decay, dtype) * jnp.asarray(step, dtype))
    return lr

  def _step(self, grads, state: KerasNadamState, params, present: Optional[Tuple[bool, ...]]):
    """One update: returns (new_params or None, new_state, updates)."""
    c = self._config
    if params is None and (c["weight_decay"] or c["use_ema"]):
      raise ValueError("Nadam.update needs `params` when weight_decay or use_ema is set.")
    step = self._real_step(state)
    # float32, or float64 for float64 params (the core's dtype policy).
    scalar_dtype = find_nadam_state(state).mu_product.dtype
    lr = self._learning_rate(step, scalar_dtype)
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
      momentum = jnp.where(floor_iter != 0, jnp.asarray(c["ema_momentum"], scalar_dtype), 0.0)
      ema = jax.tree.map(lambda a, p: (momentum * a + (1 - momentum) * p).astype(a.dtype),
                         state.ema, new_params)
      if c["ema_overwrite_frequency"] is not None:
        overwrite = (floor_iter + 1) % c["ema_overwrite_frequency"] == 0
        new_params = jax.tree.map(lambda a, p: jnp.where(overwrite, a, p), ema, new_params)
        updates = jax.tree.map(
            lambda n, p, u: jnp.where(overwrite, (n - p).astype(u.dtype), u),
            new_params, params, updates)
    return new_params, KerasNadamState(core, ema), updates

  def _update(self, updates, state, params=None):
    _, new_state, updates = self._step(updates, state, params, None)
    return updates, new_state

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


# The full keyword list for introspection (help, IDEs) and for optax.inject_hyperparams,
# which binds arguments by signature and cannot see through **kwargs.
Nadam.__signature__ = inspect.Signature(
    [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v)
     for k, v in list(_keras_config.DEFAULTS.items())[:5]]
    + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
       for k, v in list(_keras_config.DEFAULTS.items())[5:]],
    return_annotation="Nadam")

# A childless pytree node: jax must not unflatten it as a namedtuple of functions.
jax.tree_util.register_pytree_node(Nadam, lambda opt: ((), opt), lambda opt, _: opt)

