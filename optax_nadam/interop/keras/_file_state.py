"""A Keras / TF file's Nadam state as our optimizer state (private to `from_keras`).

`file_state` turns a `_read.KerasFile` into `PeerSlot`s (moments in the
params' layout), `PeerExtras` (Keras 3 accumulation, EMA) and the peer's
hyperparameters, and hands them to `build_state`; `not_nadam` says why a file
holds no Nadam state.
"""

from typing import Any, Callable, Optional

import numpy as np
import optax

from optax_nadam.interop._state import PeerExtras, PeerSlot, build_state, param_paths
from optax_nadam.interop.keras import _hyper, _read, _verify

Layout = Callable[[str, np.ndarray], Any]


def laid_out(layout: Optional[Layout], leaf: str, x: np.ndarray, where: str) -> np.ndarray:
  """``layout(leaf, x)`` as a numpy array (x itself without a layout)."""
  if layout is None:
    return x
  try:
    return np.asarray(layout(leaf, x))
  except Exception as e:
    raise ValueError(f"{where}: layout({leaf!r}, array of shape {x.shape}) failed: {e}") from e


def not_nadam(kf: _read.KerasFile) -> ValueError:
  if kf.unusable:
    return ValueError(kf.unusable)
  if kf.optimizer is None:
    return ValueError(
        f"{kf.path} holds no optimizer state (saved without the optimizer, or never "
        "compiled); params_from_keras still reads its weights.")
  name = kf.optimizer.split(".")[-1]
  detail = (" Adam keeps m and v but no momentum cache / u-product (the product of Nadam's "
            "momentum schedule), so Nadam's trajectory cannot be continued from it."
            if "adam" in name.lower() and "nadam" not in name.lower() else "")
  return ValueError(
      f"{kf.path} holds the state of a {kf.optimizer} optimizer, not a Keras Nadam "
      f"(tf_keras.optimizers.legacy.Nadam, keras.optimizers.Nadam).{detail}")


def build_checked(tx, params, slots, extras, hyper, config, where: str, *, sync_schedules: bool,
                  check_schedule: bool, check_hyperparams: Optional[bool],
                  complete: bool = True, decayed=None) -> optax.OptState:
  """`build_state`, then tx checked against the peer's config (`verify`).

  The Keras front is compared key by key with the peer's config; another tx
  is probed (`_verify.check`, accumulation-aware). `decayed`: per leaf, whether
  a live peer decays it (its ``exclude_from_weight_decay``); None where the
  source cannot say (a file), and tx's exclusions are then the caller's word.
  """
  state = build_state(tx, params, slots, extras=extras, sync_schedules=sync_schedules,
                      check_schedule=check_schedule, check_hyperparams=False)
  if check_hyperparams is None:
    check_hyperparams = check_schedule
  if not check_hyperparams:
    return state
  if _verify.keras_front(tx):
    _verify.compare_configs(tx, config, where, complete)
    if decayed is not None and hyper["weight_decay"]:
      _verify.compare_decay_masks(tx, params, decayed, where)
    return state
  paths = param_paths(params)
  wheres = [f"{s.where} (params leaf {p})" for s, p in zip(slots, paths)]
  k = int(config.get("gradient_accumulation_steps") or 0) or 1
  _verify.check(tx, state, params, _verify.hypers_for(hyper, len(paths), decayed), wheres, k)
  return state


def file_state(kf, tx, params, layout, **kwargs) -> optax.OptState:
  """`state_from_keras` for a file read by `_read.read`: slots, extras, hyperparameters."""
  if kf.optimizer != "Nadam":  # another optimizer, even one saved before its first step
    raise not_nadam(kf)
  fresh = kf.m is None and kf.count == 0  # a Nadam saved before its first step: no slots
  if kf.m is None and not fresh:
    raise not_nadam(kf)
  if kf.unusable:
    raise ValueError(kf.unusable)
  paths = param_paths(params)
  if not fresh and len(kf.m) != len(paths):
    raise ValueError(
        f"{kf.path} holds Nadam slots for {len(kf.m)} variables ({kf.names[:5]}) but params "
        f"has {len(paths)} leaves ({paths[:5]}); they are matched one to one in the file's "
        "order.")
  k = int(kf.config.get("gradient_accumulation_steps") or 0) or 1
  # The peer's next Nadam step is on the cycle's last call: its schedule sees that call.
  real = kf.count * k + k - 1
  complete = "epsilon" in kf.config
  hyper = _hyper.hyperparams(kf.kind, kf.config, real, kf.path, complete=complete)
  slots = []
  for i, leaf in enumerate(paths):
    where = f"{kf.path}: Keras variable {i} ({kf.names[i] if i < len(kf.names) else '?'})"
    if fresh:
      slots.append(PeerSlot(where, None, None, None, None, hyper["b1"], hyper["psi"]))
      continue
    slots.append(PeerSlot(where, kf.count, kf.mu_product, laid_out(layout, leaf, kf.m[i], where),
                          laid_out(layout, leaf, kf.v[i], where), hyper["b1"], hyper["psi"]))
  each = lambda xs: None if xs is None else [  # noqa: E731
      laid_out(layout, leaf, x, s.where) for leaf, x, s in zip(paths, xs, slots)]
  extras = PeerExtras(kf.mini_step, each(kf.accumulators), each(kf.ema)) if not fresh else None
  return build_checked(tx, params, slots, extras, hyper, kf.config, kf.path, complete=complete,
                       **kwargs)
