"""`build(config)`: a `NadamConfig` to its optax transformation, and the step (private).

Pure functions of a frozen `NadamConfig`; `optax_nadam.keras.Nadam` is a thin
class around `build(config)`. One update, in Keras 3's order (tf-keras
legacy's where Keras 3 has none)::

  g / loss_scale_factor                      optax.scale
  accumulate k steps: (g + acc) / k          optax.MultiSteps (sum) + optax.scale(1/k)
    clipvalue -> clipnorm (per tensor) -> global_clipnorm
    scale_by_nadam(momentum_decay=schedule_decay)
    + weight_decay * param (decoupled, masked by exclude_from_weight_decay)
  * -lr(step), lr(step) = schedule(step) / (1 + decay * step)
  EMA of the new params; every ema_overwrite_frequency steps params := EMA

State layout (what ``init`` returns), for tools such as
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
"""

import functools
import re
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from optax_nadam import _tree
from optax_nadam.keras.config import NadamConfig
from optax_nadam.keras.schedules import KerasSchedule
from optax_nadam.keras.state import find_nadam_state, keep_where_absent
from optax_nadam.transform import scale_by_nadam


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


def _accumulate(inner: optax.GradientTransformation, k: int) -> optax.GradientTransformation:
  """`optax.MultiSteps(inner, k, use_grad_mean=False)` with per-leaf accumulators.

  The same state (`optax.MultiStepsState`) and the same arithmetic, but each
  accumulator has its param's dtype, at least float32 (float32 for
  bfloat16/float16/float32 params; float64, complex64 and
  complex128 params keep their precision and imaginary part), where
  `optax.MultiSteps` takes one ``accumulator_dtype`` for the whole tree.

  Args:
    inner: the transformation applied to the summed gradients every k calls.
    k: the number of update calls per applied step, >= 2.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is `optax.MultiStepsState`.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return optax.MultiStepsState(
        mini_step=jnp.zeros([], jnp.int32),
        gradient_step=jnp.zeros([], jnp.int32),
        inner_opt_state=inner.init(params),
        acc_grads=jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p),
                                                                 jnp.float32)), params),
        skip_state=())

  def update_fn(updates, state, params=None, **extra_args):
    acc_grads = jax.tree.map(lambda g, acc: g + acc, updates, state.acc_grads)
    final_updates, new_inner_state = inner.update(
        optax.tree.cast_like(acc_grads, updates), state.inner_opt_state, params, **extra_args)
    emit = state.mini_step == (k - 1)
    new_state = optax.MultiStepsState(
        mini_step=optax.safe_increment(state.mini_step) % k,
        gradient_step=emit * optax.safe_increment(state.gradient_step)
        + (1 - emit) * state.gradient_step,
        inner_opt_state=jax.tree.map(
            lambda st, nst: jnp.astype(jnp.where(emit, nst, st), st.dtype),
            state.inner_opt_state, new_inner_state),
        acc_grads=jax.tree.map(
            lambda ga, old: jnp.astype((1 - emit) * ga, old.dtype), acc_grads,
            state.acc_grads),
        skip_state=state.skip_state)
    return jax.tree.map(lambda ga: emit * ga, final_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def decay_mask(patterns, params):
  """True where weight decay applies: leaves whose "/"-joined path matches no pattern."""
  if not patterns:
    return jax.tree.map(lambda _: True, params)
  regex = re.compile("|".join(patterns))
  flags = [regex.search(n) is None for n in _tree.leaf_names(params)]
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def core_transform(config: NadamConfig) -> optax.GradientTransformation:
  """The optax chain of `config` before the learning rate (state ``KerasNadamState.core``)."""
  c, k = config, config.accumulation
  inner = []
  if k > 1:
    inner.append(optax.scale(1.0 / k))
  if c.clipvalue is not None:
    inner.append(optax.clip(c.clipvalue))
  if c.clipnorm is not None:
    inner.append(_clip_by_tensor_norm(c.clipnorm))
  if c.global_clipnorm is not None:
    inner.append(optax.clip_by_global_norm(c.global_clipnorm))
  inner.append(scale_by_nadam(c.beta_1, c.beta_2, c.epsilon, momentum_decay=c.schedule_decay))
  if c.weight_decay is not None:
    inner.append(optax.add_decayed_weights(
        c.weight_decay, functools.partial(decay_mask, c.exclude_from_weight_decay)))
  inner = optax.chain(*inner)
  if k > 1:
    inner = _accumulate(inner, k)
  scale = 1.0 if c.loss_scale_factor is None else 1.0 / c.loss_scale_factor
  return optax.chain(optax.scale(scale), inner)


def real_step(config: NadamConfig, state: KerasNadamState) -> chex.Array:
  """Update calls so far (``count * k + mini_step``): what schedules and ``decay`` see."""
  step = find_nadam_state(state).count
  if config.accumulation > 1:
    multi = _tree.find_one(state.core, optax.MultiStepsState, "pass this optimizer's state.")
    step = step * config.accumulation + multi.mini_step
  return step


def learning_rate(config: NadamConfig, step: chex.Array, dtype: Any = jnp.float32) -> chex.Array:
  """``schedule(step) / (1 + decay * step)`` as a scalar of `dtype`.

  `dtype` is the state's mu-product dtype: float32, or float64 for float64
  params under x64 (the core's dtype policy); a Keras schedule config is
  computed in it.
  """
  lr = config.learning_rate
  if isinstance(lr, KerasSchedule):
    lr = lr.schedule(dtype)(step)
  elif callable(lr):
    lr = lr(step)
  lr = jnp.asarray(lr, dtype)
  decay = config.decay
  if not (isinstance(decay, float) and decay == 0.0):  # traced under inject_hyperparams
    lr = lr / (1.0 + jnp.asarray(decay, dtype) * jnp.asarray(step, dtype))
  return lr


def step(config: NadamConfig, grads, state: KerasNadamState, params, present=None,
         core: Optional[optax.GradientTransformation] = None):
  """One update: returns ``(new_params or None, new_state, updates)``.

  Args:
    config: the optimizer's config.
    grads: the gradients (zeros where a gradient is absent).
    state: the optimizer's state.
    params: the parameters (needed by weight decay and EMA), or None.
    present: None, or a params-shaped tree of booleans, False where a
      gradient is absent: there the update is 0 and every params-shaped
      part of the optax state keeps its old value (Keras skips the variable).
    core: `core_transform(config)` when the caller has built it already.

  Returns:
    ``(new_params, new_state, updates)``; new_params is None without params.
  """
  c, k = config, config.accumulation
  if params is None and (c.weight_decay or c.use_ema):
    raise ValueError("Nadam.update needs `params` when weight_decay or use_ema is set.")
  step_count = real_step(c, state)
  # float32, or float64 for float64 params (the core's dtype policy).
  scalar_dtype = find_nadam_state(state).mu_product.dtype
  lr = learning_rate(c, step_count, scalar_dtype)
  core = core_transform(c) if core is None else core
  updates, core_state = core.update(grads, state.core, params)
  if present is not None:
    core_state = keep_where_absent(core_state, state.core, present)
    updates = jax.tree.map(lambda p, u: jnp.where(p, u, jnp.zeros_like(u)), present, updates)
  updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
  new_params = None if params is None else optax.apply_updates(params, updates)
  ema = state.ema
  if c.use_ema:
    floor_iter = step_count // k
    momentum = jnp.where(floor_iter != 0, jnp.asarray(c.ema_momentum, scalar_dtype), 0.0)
    ema = jax.tree.map(lambda a, p: (momentum * a + (1 - momentum) * p).astype(a.dtype),
                       state.ema, new_params)
    if c.ema_overwrite_frequency is not None:
      overwrite = (floor_iter + 1) % c.ema_overwrite_frequency == 0
      new_params = jax.tree.map(lambda a, p: jnp.where(overwrite, a, p), ema, new_params)
      updates = jax.tree.map(
          lambda n, p, u: jnp.where(overwrite, (n - p).astype(u.dtype), u),
          new_params, params, updates)
  return new_params, KerasNadamState(core_state, ema), updates


# The Keras methods' compiled step: one compilation per config (hashable, static)
# and per tree structure; `present` is traced, so every None-gradient pattern shares it.
jitted_step = jax.jit(step, static_argnums=0)


def build(config: NadamConfig) -> optax.GradientTransformationExtraArgs:
  """The optax transformation of `config`: ``init`` and ``update`` as pure functions.

  Args:
    config: a validated `NadamConfig`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is `KerasNadamState`.
  """
  core = core_transform(config)

  def init_fn(params: optax.Params) -> KerasNadamState:
    ema = jax.tree.map(jnp.array, params) if config.use_ema else optax.EmptyState()
    return KerasNadamState(core.init(params), ema)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _, new_state, updates = step(config, updates, state, params, core=core)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
