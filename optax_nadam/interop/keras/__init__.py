"""Keras Nadam (tf-keras legacy, Keras 3) <-> optax_nadam state and params.

`resume_from_keras` (one call: params, tx, state), `state_from_keras`,
`params_from_keras`, `optimizer_config_from_keras`, and `state_to_keras`
(written in `optax_nadam.interop.keras._export`).

Sources are live optimizers / models, or files read as plain data by
`optax_nadam.interop.keras._read` (``.keras``, tf-keras ``.h5``, TF checkpoints).
"""

import os
from typing import Any, Optional, Sequence, Tuple

import optax

from optax_nadam.interop import _files
from optax_nadam.interop.keras import _config, _live, _read, _resume, _weights
from optax_nadam.interop.keras._export import state_to_keras
from optax_nadam.interop.keras._file_state import Layout, file_state, not_nadam

__all__ = ["optimizer_config_from_keras", "params_from_keras", "resume_from_keras",
           "state_from_keras", "state_to_keras"]


def _is_path(source: Any) -> bool:
  return isinstance(source, (str, bytes, os.PathLike))


def resume_from_keras(
    source: Any,
    like: optax.Params,
    *,
    layout: Optional[Layout] = None,
    config: Optional[dict] = None,
) -> Tuple[optax.Params, optax.GradientTransformation, optax.OptState]:
  """Continues a Keras run: ``(params, tx, opt_state)`` from its file or live model.

  ``tx.update(grads, opt_state, params)`` then takes the peer's next step. tx
  is the Keras front, `optax_nadam.keras.Nadam`, built from the peer's own
  optimizer config: learning rate or schedule (at the real step count),
  betas, epsilon, the momentum schedule (Keras 3 and ``tf_keras.optimizers.Nadam``:
  ``schedule_decay=1.0``; tf-keras legacy: its stored ``decay``), clipping,
  weight decay, EMA and gradient accumulation (mid-cycle too). The file is
  read once.

  Pairing (which moment is whose) is proven or refused: ``.keras`` files of
  Sequential and Functional models keep ``model.layers`` order (their config
  lists it) and the optimizer's order is ``model.trainable_variables``
  (Keras 3.0-3.9 and 3.10+ layouts told apart by ``metadata.json``); a
  subclassed model's ``.keras`` stores its layers alphabetically by attribute:
  paired only when the shapes leave one pairing over every order of its
  layers, else refused (pass the live model instead); tf-keras ``.h5`` slots name
  their weights; TF checkpoint slots link to their variables in the object
  graph, and the variables come in tf-keras's ``trainable_variables`` order.
  A ``LossScaleOptimizer`` (mixed precision) is unwrapped: its inner Nadam
  continues (the loss scale changes no float32 step).

  Args:
    source: a path (``.keras`` from Keras 3.0 onwards, tf-keras ``.h5``, a TF
      checkpoint prefix or directory, a SavedModel directory), or a compiled
      Keras model after training (variables paired by identity).
    like: the params tree (arrays or ``jax.ShapeDtypeStruct``): its i-th leaf
      is the model's i-th trainable variable (``model.trainable_variables``
      order).
    layout: optional ``(params_leaf_path, array) -> array`` applied to every
      weight and moment (e.g. to transpose convolution kernels).
    config: only for what the source does not store: a TF checkpoint has no
      epsilon or clipping; pass the peer's ``optimizer.get_config()`` (or at
      least ``{"epsilon": ...}``). Keys the source states must agree.

  Returns:
    ``(params, tx, opt_state)``: params shaped like `like`, the
    `optax_nadam.keras.Nadam`, and its filled state.

  Raises:
    FileNotFoundError: no file at `source`.
    TypeError: `source` is neither a path nor a compiled Keras model.
    ValueError: another format or optimizer, a damaged file, a pairing the
      file does not prove (a subclassed model's ``.keras`` with layers of
      equal shapes), a TF checkpoint
      without `config`, or a count / shape / dtype / value that does not fit
      (the message names the file, the variable and the params leaf).
  """
  if _is_path(source):
    return _resume.resume_file(source, like, layout, config)
  return _resume.resume_live(source, like, layout, config)


def state_from_keras(
    source: Any,
    tx: optax.GradientTransformation,
    params: optax.Params,
    var_list: Optional[Sequence[Any]] = None,
    *,
    layout: Optional[Layout] = None,
    sync_schedules: bool = True,
    check_schedule: bool = True,
    check_hyperparams: Optional[bool] = None,
) -> optax.OptState:
  """Builds ``tx.init(params)`` filled with the state of a Keras Nadam.

  Reads a tf-keras legacy `tf_keras.optimizers.legacy.Nadam` (iterations,
  momentum cache = mu-product, slots ``m`` and ``v``), a Keras 3
  `keras.optimizers.Nadam` or a `tf_keras.optimizers.Nadam` (iterations,
  u-product, ``momentum`` and ``velocity`` variables), live or from a file:
  a Keras 3 ``.keras`` archive (``model.save``), a tf-keras ``.h5`` model
  with a legacy Nadam (``model.save('x.h5')``), or a TF checkpoint of a
  tf-keras model and legacy Nadam (a prefix, a directory with a
  ``checkpoint`` file, or a SavedModel directory). Files are read as data
  (`optax_nadam.interop.keras._read`): the model's code, custom layers
  included, is never needed or run.

  Variables are matched to ``jax.tree.leaves(params)`` one to one: for a live
  optimizer by the order it created its slots in (its first
  ``apply_gradients`` / ``build``) or, explicitly, by `var_list` (the model
  variables in the order of the params leaves, e.g.
  ``model.trainable_variables``); for a file in ``model.trainable_variables``
  order, proven or refused as `resume_from_keras` says (``.keras``: a
  Sequential / Functional model's layers in ``model.layers`` order, nested
  models depth first, a subclassed model where shapes prove it; ``.h5``: slots paired by
  name, in ``optimizer_weights`` order; TF checkpoint: slots paired by the
  object graph's edges, variables depth first), as `params_from_keras`
  reads them.

  Keras 3's Nadam has the momentum schedule ``0.96 ** t``, i.e.
  ``momentum_decay=1.0``: build tx with ``nadam(..., momentum_decay=1.0)`` (or
  ``keras.Nadam(..., schedule_decay=1.0)``); the probe (`check_schedule`)
  raises otherwise. tf-keras legacy uses its ``schedule_decay`` (0.004).

  Args:
    source: the Keras Nadam (after training; an unbuilt one gives a fresh
      state), or the path of a file holding one.
    tx: the optax transformation to continue with (see `state_from_torch`).
    params: the params tree.
    var_list: live optimizers only: model variables, ``var_list[i]`` being
      the peer of ``jax.tree.leaves(params)[i]``.
    layout: optional ``(params_leaf_path, array) -> array`` applied to every
      moment (and EMA average / accumulated gradient) before matching; the
      path is ``jax.tree_util.keystr`` of the leaf, e.g. ``"['dense']['kernel']"``.
    sync_schedules: also set the step count of learning-rate schedules and
      ``inject_hyperparams`` in tx's state to the imported count.
    check_schedule: verify that tx's next momentum coefficient equals the
      optimizer's (beta_1 and psi) with one probe update on zeros.
    check_hyperparams: verify tx against the optimizer's config: an
      `optax_nadam.keras.Nadam` key by key; any other tx by probing its next
      step (`optax_nadam.interop._check.check_step`),
      on a state set to the last call of the peer's accumulation cycle:
      learning rate (or its schedule at that call), beta_2, epsilon, weight
      decay (Keras 3: decoupled), clipping (``clipnorm`` per variable,
      ``clipvalue``, ``global_clipnorm``) and the accumulation. A TF
      checkpoint does not store epsilon (taken as tf-keras's default 1e-7)
      or clipping (not checked). None: as `check_schedule`; False allows a
      deliberate change (a new learning rate).

  Returns:
    A state with the structure of ``tx.init(params)``.

  Raises:
    FileNotFoundError: no file at `source`.
    TypeError: not a Keras Nadam, or `var_list` with a file.
    ValueError: a file of another format, truncated or holding another
      optimizer's state; wrong number of variables, a shape / dtype / value
      that does not fit, a variable in `var_list` the optimizer does not know,
      Keras 3 gradient accumulators that are not empty, or a momentum schedule
      that differs from tx's, or a hyperparameter that differs (named, with
      both values and the tx that matches). The message names the file, the
      variable and the params leaf.
  """
  kwargs = dict(sync_schedules=sync_schedules, check_schedule=check_schedule,
                check_hyperparams=check_hyperparams)
  if _is_path(source):
    if var_list is not None:
      raise TypeError("var_list matches live variables; a file's variables come in its order.")
    return file_state(_read.read(source, _files.Budget.like(params)), tx, params, layout,
                      **kwargs)
  return _live.live_state(source, tx, params, var_list, layout, **kwargs)


def params_from_keras(source: Any, like: optax.Params, *,
                      layout: Optional[Layout] = None) -> optax.Params:
  """The trainable weights of a Keras model or file, as a params tree shaped like `like`.

  Files are read as data (see `state_from_keras`; custom layer classes need
  not be importable). The i-th trainable variable, in the file's order (the
  order the optimizer holds its slots in; a file saved without an optimizer
  gives every saved variable of the layers not marked ``trainable: false``),
  becomes ``jax.tree.leaves(like)[i]``. For a live model that order is
  ``model.trainable_variables``.

  Args:
    source: a path (``.keras``, tf-keras ``.h5``, TF checkpoint prefix or
      directory), a Keras model, or a list of Keras / tf variables.
    like: a params tree (arrays or ``jax.ShapeDtypeStruct``) giving the
      structure, shapes and dtypes.
    layout: optional ``(params_leaf_path, array) -> array`` applied to every
      weight before matching (a Keras ``Dense`` kernel is already ``(in, out)``
      like Flax's; convolution kernels may need a transpose).

  Returns:
    A tree like `like` of jax arrays (placed with `like`'s shardings).

  Raises:
    FileNotFoundError: no file at `source`.
    ValueError: another format, a truncated file, a number of weights, shape,
      dtype or non-finite value that does not fit; the message names the
      file, the variable and the params leaf path.
  """
  if _is_path(source):
    kf = _read.read(source, _files.Budget.like(like))  # no array larger than like's
    return _weights.place(kf.path, kf.names, kf.weights, like, layout)
  return _weights.place(*_live.live_weights(source), like, layout)


def optimizer_config_from_keras(source: Any) -> dict:
  """The saved optimizer's config (``get_config()`` as stored), to build tx like the peer.

  E.g. ``optax_nadam.keras.Nadam.from_config(optimizer_config_from_keras('m.keras'))``
  is the Keras front with the peer's hyperparameters (Keras 3 configs map to
  ``schedule_decay=1.0``). A TF checkpoint stores only ``learning_rate``,
  ``beta_1``, ``beta_2`` and ``decay`` (epsilon and clipping are not saved).

  Args:
    source: a path (``.keras``, tf-keras ``.h5``, TF checkpoint) or a live
      Keras optimizer.

  Returns:
    A dict of plain values.

  Raises:
    FileNotFoundError: no file at `source`.
    ValueError: another format, a damaged file, or no optimizer saved.
  """
  if not _is_path(source):
    return dict(source.get_config())
  kf = _read.read(source)
  if kf.optimizer is None:
    raise not_nadam(kf)
  _config.check_keras_optimizer(kf.optimizer, kf.path)
  return dict(kf.config)
