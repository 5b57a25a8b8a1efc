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
