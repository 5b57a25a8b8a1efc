"""The Nadam's variables in a ``.keras`` file, by the Keras version that wrote it (private).

``optimizer.save_own_variables`` writes ``optimizer.variables`` as
``optimizer/vars/<i>``, in the order the optimizer created them, which changed
with Keras 3.10 (``metadata.json`` has ``keras_version``):

- Keras 3.0-3.9: ``iteration``, ``learning_rate`` (unless a schedule), per
  model variable its EMA ``average`` and then its ``gradient_accumulator``
  (interleaved, when enabled), the u-product, then a ``momentum``,
  ``velocity`` pair per model variable;
- Keras 3.10 onwards: ``iteration``, ``learning_rate``, all EMA averages, all
  accumulators, the pairs, then the u-product.

Before Keras 3.5, ``iterations`` counted every call with gradient
accumulation, and the Nadam stepped with t = that count (3, 6, ... for k = 3),
not the number of applied steps as since 3.5 (and `optax_nadam.keras.Nadam`):
such a run's state is refused (`unusable`).

A `LossScaleOptimizer` (``keras.mixed_precision``; ``compile`` wraps the
optimizer under a ``mixed_float16`` policy) saves its own variables
(``iteration``, ``learning_rate``, ``step_counter``, ``dynamic_scale``, and
in 3.0-3.9 copies of the inner ones) and the inner optimizer's under
``optimizer/inner_optimizer/vars``; its config holds the inner one's under
``inner_optimizer``. Inside it the Nadam's u-product is not among
``optimizer.variables``, so it is not saved, and under the JAX backend (a
stateless train step over ``optimizer.variables``) it never advances: it stays
1.0, and the run's steps are not Nadam's. Which backend wrote a file is not
recorded, so its state is refused (`unusable`); its weights read as usual.
"""

import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from optax_nadam.interop._files import FileFormatError, array
from optax_nadam.interop.keras import _config

LOSS_SCALE = "LossScaleOptimizer"


class Spec(NamedTuple):
  """The saved optimizer: its class name, config, and the wrapper around it (if any)."""

  name: Optional[str]  # the (inner) optimizer's class name; None when none was saved
  config: Dict[str, Any]
  wrapper: Optional[str] = None  # "LossScaleOptimizer" when the optimizer is wrapped


def spec(path: str, config: Dict[str, Any]) -> Spec:
  """The optimizer of ``compile_config.optimizer``, unwrapping a `LossScaleOptimizer`."""
  opt = (config.get("compile_config") or {}).get("optimizer")
  if opt is None:
    return Spec(None, {})
  if isinstance(opt, str):
    return Spec(opt, {})
  if not isinstance(opt, dict) or not isinstance(opt.get("config"), dict):
    raise FileFormatError(f"{path}: compile_config.optimizer is not a Keras config: {opt!r}")
  if opt.get("class_name") == LOSS_SCALE:
    inner = opt["config"].get("inner_optimizer")
    if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
      raise FileFormatError(f"{path}: the LossScaleOptimizer's config has no inner_optimizer "
                            f"config: {opt['config']!r}")
    return Spec(_config.optimizer_name(inner), dict(inner["config"]), LOSS_SCALE)
  return Spec(_config.optimizer_name(opt), dict(opt["config"]))


def variables(h5: Any, wrapper: Optional[str]) -> Tuple[List[Any], Optional[str]]:
  """The (inner) optimizer's saved variables in their order, and the wrapper's name.

  Under a ``mixed_float16`` policy ``compile`` wraps the optimizer in a
  LossScaleOptimizer but the config keeps the Nadam's: the file's
  ``optimizer/inner_optimizer`` group tells.
  """
  if "optimizer" not in h5:
    return [], wrapper
  group = h5["optimizer"]
  if "inner_optimizer" in group:
    group, wrapper = group["inner_optimizer"], wrapper or LOSS_SCALE
  elif wrapper == LOSS_SCALE:
    return [], wrapper
  if "vars" not in group:
    return [], wrapper
  group = group["vars"]
  return [group[k] for k in sorted(group, key=int)], wrapper


def version(meta: Dict[str, Any]) -> Optional[Tuple[int, int]]:
  """``(major, minor)`` of the Keras that wrote the file, from ``metadata.json``."""
  match = re.match(r"(\d+)\.(\d+)", str(meta.get("keras_version", "")))
  return (int(match.group(1)), int(match.group(2))) if match else None


class Slots(NamedTuple):
  """The Nadam's state as saved, per model variable in the optimizer's order."""

  real_steps: int  # the iteration variable: apply_gradients calls (with accumulation: calls)
  m: List[Any]
  v: List[Any]
  u_product: Optional[float]  # None: not saved (inside a LossScaleOptimizer)
  ema: Optional[List[Any]]
  accumulators: Optional[List[Any]]


def unusable(path: str, slots: "Slots", cfg: Dict[str, Any], wrapper: Optional[str],
             keras_version: Tuple[int, int]) -> Optional[str]:
  """Why the saved Nadam state cannot be continued by `optax_nadam.keras.Nadam`, or None."""
  version_text = f"{keras_version[0]}.{keras_version[1]}"
  if cfg.get("gradient_accumulation_steps") and keras_version < (3, 5):
    return (f"{path} was written by Keras {version_text} with gradient_accumulation_steps: "
            "before Keras 3.5 the Nadam counted every call as a step (t = 3, 6, ... for 3 "
            "accumulated calls), where Keras 3.5+ and optax_nadam.keras.Nadam count applied "
            "steps (t = 1, 2, ...), so that run's next step cannot be taken here. "
            "params_from_keras still reads the weights.")
  if slots.u_product is None:
    return (f"{path} holds a keras.optimizers.Nadam inside a {wrapper or 'wrapper'} (mixed "
            "precision). Keras 3 does not save that Nadam's u-product (the product of its "
            "momentum schedule: it is not among optimizer.variables), and under the JAX "
            "backend it never advances (it stays 1.0, so the run's steps are not Nadam's); "
            "the file does not say which backend wrote it, so the step the run would take "
            "next is not known. params_from_keras still reads the weights. To continue "
            "with Nadam's own schedule, train on from those weights with a fresh state, or "
            "wrap the Nadam in no LossScaleOptimizer (float32 training needs none).")
  return None


def nadam_slots(path: str, opt_vars: List[Any], cfg: Dict[str, Any],
                keras_version: Optional[Tuple[int, int]]) -> Slots:
  """Splits a Keras 3 Nadam's saved variables by the layout of `keras_version`.

  Raises:
    FileFormatError: the number or shapes of the variables fit no layout, or
      the file does not say which Keras wrote it.
  """
  lr_var = not isinstance(cfg.get("learning_rate"), dict)
  ema = bool(cfg.get("use_ema"))
  acc = bool(int(cfg.get("gradient_accumulation_steps") or 0))
  head, per = 1 + lr_var, 2 + ema + acc
  rest = len(opt_vars) - head
  with_u = rest >= 1 and (rest - 1) % per == 0  # per >= 2: the parity tells the two apart
  n = (rest - 1) // per if with_u else rest // per
  if rest < 0 or (not with_u and rest % per):
    raise FileFormatError(
        f"{path}: the Nadam's {len(opt_vars)} saved variables do not fit Keras 3's layout "
        f"(iteration{', learning_rate' if lr_var else ''}, {per} per variable, u_product).")
  if keras_version is None:
    raise FileFormatError(
        f"{path}: metadata.json does not say which Keras wrote the file (keras_version), "
        "and Keras 3.0-3.9 and 3.10+ save the Nadam's variables in different orders.")
  old = keras_version < (3, 10)
  extra = n * (ema + acc)
  if old:  # head, (average, accumulator) per variable, [u], pairs
    inter = opt_vars[head:head + extra]
    emas = inter[0::ema + acc] if ema else None
    accs = inter[ema::ema + acc] if acc else None
    u_at = head + extra if with_u else None
    pairs = opt_vars[head + extra + with_u:]
  else:  # head, averages, accumulators, pairs, [u]
    emas = opt_vars[head:head + n] if ema else None
    accs = opt_vars[head + n * ema:head + n * ema + n] if acc else None
    u_at = len(opt_vars) - 1 if with_u else None
    pairs = opt_vars[head + extra:head + extra + 2 * n]
  ms, vs = pairs[0::2], pairs[1::2]
  for i, (m, v) in enumerate(zip(ms, vs)):
    if m.shape != v.shape:
      raise FileFormatError(
          f"{path}: the Nadam's momentum and velocity of variable {i} have shapes {m.shape} "
          f"and {v.shape}; the file does not have Keras {keras_version[0]}."
          f"{keras_version[1]}'s layout.")
  for what, xs in (("EMA average", emas), ("gradient accumulator", accs)):
    for i, (x, m) in enumerate(zip(xs or [], ms)):
      if x.shape != m.shape:
        raise FileFormatError(
            f"{path}: the Nadam's {what} of variable {i} has shape {x.shape} but its momentum "
            f"{m.shape}; the file does not have Keras {keras_version[0]}.{keras_version[1]}'s "
            "layout.")
  u = None
  if u_at is not None:
    if opt_vars[u_at].shape != ():
      raise FileFormatError(
          f"{path}: the Nadam's variable {u_at} should be the u-product (a scalar) in Keras "
          f"{keras_version[0]}.{keras_version[1]}'s layout but has shape {opt_vars[u_at].shape}.")
    u = float(array(opt_vars[u_at]))
  return Slots(int(array(opt_vars[0])), [array(x) for x in ms], [array(x) for x in vs], u,
               [array(x) for x in emas] if emas else None,
               [array(x) for x in accs] if accs else None)
