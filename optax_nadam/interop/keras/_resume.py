"""One call from a Keras file or model to ``(params, tx, opt_state)`` (private).

tx is the Keras front, `optax_nadam.keras.Nadam`, built from the peer's own
config (`tx_from_config`): its learning rate or schedule, betas, epsilon,
momentum schedule (psi 1.0 for Keras 3 and ``tf_keras.optimizers.Nadam``, the
stored ``decay`` for tf-keras legacy), clipping, weight decay, EMA and
gradient accumulation. The state is filled from the same read of the file.
"""

import re
from typing import Any, Dict, Optional, Tuple

import optax

from optax_nadam import _tree
from optax_nadam.interop import _files
from optax_nadam.interop.keras import _read, _verify, _weights
from optax_nadam.interop.keras._file_state import Layout, file_state, not_nadam
from optax_nadam.interop.keras._live import decayed, live_state, live_weights, unwrap

# What a TF checkpoint does not store, and a caller's config must state.
_CHECKPOINT_NEEDS = ("epsilon",)


def tx_from_config(config: Dict[str, Any], where: str,
                   extra: Optional[Dict[str, Any]] = None, complete: bool = True) -> Any:
  """The Keras front with the peer's config (and `extra` for what the source lacks).

  Args:
    config: the peer optimizer's config as stored (``get_config()``).
    where: names the source in messages.
    extra: the caller's config, for keys the source does not store (a TF
      checkpoint's epsilon and clipping); a key both state must agree.
    complete: False for a TF checkpoint, which stores only the
      hyperparameters that are variables.

  Returns:
    An `optax_nadam.keras.Nadam`.

  Raises:
    ValueError: the source lacks epsilon and `extra` does not give it, `extra`
      contradicts the source, or a value Nadam refuses (named).
  """
  from optax_nadam.keras import Nadam

  merged = dict(config)
  if extra:
    for key, value in extra.items():
      if key in config and key != "name" and not _verify._same(config[key], value):
        raise ValueError(f"{where}: config[{key!r}] is {value!r} but the file has "
                         f"{config[key]!r}; give only what the file does not store.")
      merged.setdefault(key, value)
  if not complete:
    missing = [k for k in _CHECKPOINT_NEEDS if k not in merged]
    if missing:
      raise ValueError(
          f"{where} is a TF checkpoint: it stores the Nadam's learning_rate, beta_1, beta_2 "
          f"and decay (its variables) but not {', '.join(missing)} or clipping (Python "
          "attributes), so the optimizer that continues the run is not known. Pass the "
          "peer's config: resume_from_keras(path, like, config=optimizer.get_config()), or "
          "at least config={'epsilon': ...} (tf-keras's default is 1e-07); or save the model "
          "with model.save('x.h5') or model.save(directory) (a SavedModel with its "
          "keras_metadata.pb), which store the whole config.")
  try:
    return Nadam.from_config(merged)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: the optimizer's config cannot be continued by "
                     f"optax_nadam.keras.Nadam: {e}") from None


def resume_file(path: Any, like: Any, layout: Optional[Layout],
                config: Optional[Dict[str, Any]]) -> Tuple[Any, Any, optax.OptState]:
  """`resume_from_keras` for a file: read once, then params, tx and state."""
  kf = _read.read(path, _files.Budget.like(like))  # no array larger than like's
  if kf.optimizer != "Nadam" or (kf.m is None and kf.count != 0):
    raise not_nadam(kf)
  where = f"{kf.path}{f' ({kf.wrapper})' if kf.wrapper else ''}"
  if kf.unusable:
    raise ValueError(kf.unusable)
  decay = kf.config.get("weight_decay")
  if kf.kind == "v3" and decay and "exclude_from_weight_decay" not in (config or {}):
    raise ValueError(
        f"{where}: the Nadam has weight_decay {decay:g}, which Keras applies to every "
        "variable but those its code excluded with optimizer.exclude_from_weight_decay(...), "
        "and exclude_from_weight_decay is not saved in the file (nor in get_config()), so "
        "which params leaves the run decayed is not known. State it: "
        "config={'exclude_from_weight_decay': []} if nothing was excluded, else the regexes "
        "of the excluded leaves, searched in the '/'-joined params leaf paths (like's "
        f"leaves: {_tree.leaf_names(like)[:12]}).")
  complete = "epsilon" in kf.config
  tx = tx_from_config(kf.config, where, config, complete)
  params = _weights.place(kf.path, kf.names, kf.weights, like, layout)
  # tx is built from the file's config: nothing to compare, no step to probe.
  state = file_state(kf, tx, params, layout, sync_schedules=True, check_schedule=True,
                     check_hyperparams=False)
  return params, tx, state


def resume_live(model: Any, like: Any, layout: Optional[Layout],
                config: Optional[Dict[str, Any]]) -> Tuple[Any, Any, optax.OptState]:
  """`resume_from_keras` for a live Keras model: variables paired by identity."""
  optimizer = getattr(model, "optimizer", None)
  if optimizer is None or not hasattr(model, "trainable_variables"):
    raise TypeError(
        f"source is a {type(model).__name__}; resume_from_keras reads a file path or a "
        "compiled Keras model (with .optimizer and .trainable_variables).")
  variables = list(model.trainable_variables)
  peer = dict(unwrap(optimizer).get_config())
  flags = decayed(optimizer, variables)
  if flags is not None:  # the live optimizer's exclusions, as exact leaf paths
    names = _tree.leaf_names(like)
    peer["exclude_from_weight_decay"] = [f"^{re.escape(n)}$" for n, f in zip(names, flags)
                                         if not f]
  tx = tx_from_config(peer, "the Keras model's optimizer", config)
  params = _weights.place(*live_weights(variables), like, layout)
  state = live_state(optimizer, tx, params, variables, layout, check_hyperparams=False)
  return params, tx, state
