"""`KerasFile`: what a Keras / TF file holds, in our terms (one type for every reader)."""

from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class KerasFile(NamedTuple):
  """What a Keras / TF file holds, in our terms (arrays are numpy copies)."""

  path: str
  kind: str  # "v3" (Keras 3: psi = 1) or "legacy" (tf-keras legacy Nadam: psi = decay)
  optimizer: Optional[str]  # the saved optimizer's class name; None when none was saved
  config: Dict[str, Any]  # the optimizer's config (a TF checkpoint has only some keys)
  names: List[str]  # per trainable weight, where it is in the file
  weights: List[np.ndarray]
  count: Optional[int] = None  # Nadam steps applied; None without optimizer state
  mu_product: Optional[float] = None
  m: Optional[List[np.ndarray]] = None
  v: Optional[List[np.ndarray]] = None
  mini_step: int = 0  # Keras 3 gradient accumulation: update calls since the last step
  accumulators: Optional[List[np.ndarray]] = None
  ema: Optional[List[np.ndarray]] = None
  wrapper: Optional[str] = None  # "LossScaleOptimizer" when the Nadam is wrapped in one
  unusable: Optional[str] = None  # why the Nadam state cannot be continued (weights still can)


def tf_keras_nadam(where: str, why: str) -> str:
  """Why a ``tf_keras.optimizers.Nadam`` (the non-legacy class) state is not continued.

  That class keeps its u-product (the product of its momentum schedule) behind
  a Python counter that a traced train step (``model.fit``'s default) captures:
  traced, it multiplies the u-product once per variable per step, and restored
  from a file it does so again. Its steps are Nadam's only while that product
  is negligible or the run is eager; `why` says what this source shows.
  """
  return (f"{where} holds a tf_keras.optimizers.Nadam (not the legacy class): {why}. Under "
          "a traced train step (model.fit's default) that class multiplies its u-product (the "
          "product of its momentum schedule) once per variable per step, and restored from a "
          "file it does so again, so the step the run takes next is not Nadam's and is not "
          "known. params_from_keras(path, like) reads the weights. To move a run with its "
          "optimizer state, train with tf_keras.optimizers.legacy.Nadam (its .h5 files and TF "
          "checkpoints resume here) or Keras 3's keras.optimizers.Nadam (.keras files).")


def schedule_product(b1: float, count: int) -> float:
  """Nadam's u-product after `count` steps with psi = 1: prod_t b1 (1 - 0.96**t / 2)."""
  product = 1.0
  for t in range(1, count + 1):
    product *= b1 * (1 - 0.5 * 0.96 ** t)
    if product < 1e-45:  # below float32's smallest: the peer's product is 0 from here on
      return 0.0
  return product


def u_product_is_nadams(u: float, b1: float, count: int) -> bool:
  """True when a u-product gives Nadam's steps: the schedule's, or both negligible.

  The step uses it only as ``1 - u`` and ``1 - u * mu_next`` in float32, which
  are 1 once ``u`` is below 2**-26.
  """
  p = schedule_product(b1, count)
  return abs(u - p) <= 1e-4 * p or max(abs(u), p) < 2.0 ** -26  # float32 products drift
