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

A `LossScaleOptimizer` (``keras.mixed_precision``; ``compile`` wraps the
optimizer under a ``mixed_float16`` policy) saves its own variables
(``iteration``, ``learning_rate``, ``step_counter``, ``dynamic_scale``, and
in 3.0-3.9 copies of the inner ones) and the inner optimizer's under
``optimizer/inner_optimizer/vars``; its config holds the inner one's under
``inner_optimizer``. Inside it the u-product is not tracked, so not saved: it
is the product of the momentum schedule over the steps, recomputed from the
step count exactly as Keras multiplies it (float32, step by step).
"""

import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from optax_nadam.interop._formats._types import FileFormatError, array

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
    return Spec(str(inner.get("class_name")), dict(inner["config"]), LOSS_SCALE)
  return Spec(str(opt.get("class_name")), dict(opt["config"]))


def variables(h5: Any, wrapper: Optional[str]) -> List[Any]:
  """The (inner) optimizer's saved variables, in their order."""
  if "optimizer" not in h5:
    return []
  group = h5["optimizer"]
  if wrapper == LOSS_SCALE:
    group = group["inner_optimizer"] if "inner_optimizer" in group else None
  if group is None or "vars" not in group:
    return []
  group = group["vars"]
  return [group[k] for k in sorted(group, key=int)]


def version(meta: Dict[str, Any]) -> Optional[Tuple[int, int]]:
  """``(major, minor)`` of the Keras that wrote the file, from ``metadata.json``."""
  match = re.match(r"(\d+)\.(\d+)", str(meta.get("keras_version", "")))
  return (int(match.group(1)), int(match.group(2))) if match else None


def u_product(b1: float, count: int) -> float:
  """Keras 3's u-product after `count` steps, multiplied as Keras does (float32).

  ``u_t = b1 * (1 - 0.5 * 0.96 ** t)``; the product is kept in a float32 variable.
  """
  b1_32, product = np.float32(b1), np.float32(1.0)
  for t in range(1, count + 1):
    u_t = b1_32 * (np.float32(1.0) - np.float32(0.5) * np.power(np.float32(0.96), np.float32(t)))
    product = np.float32(product * u_t)
  return float(product)


class Slots(NamedTuple):
  """The Nadam's state as saved, per model variable in the optimizer's order."""

  real_steps: int  # the iteration variable: apply_gradients calls (with accumulation: calls)
  m: List[Any]
  v: List[Any]
  u_product: Optional[float]  # None: not saved (inside a LossScaleOptimizer)
  ema: Optional[List[Any]]
  accumulators: Optional[List[Any]]


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
