"""Read model weights and Nadam state from Keras / TF files, without the model's code.

Three formats, each read as plain data (zipfile, json, h5py,
`tf.train.load_checkpoint`; nothing is imported by name, unpickled or eval'd,
so custom layer classes need not be importable):

* Keras 3 ``.keras`` archive (``model.save('m.keras')``): ``config.json`` (the
  optimizer's config is ``compile_config.optimizer``) and ``model.weights.h5``,
  read in `optax_nadam.interop.keras3_archive`.
* tf-keras ``.h5`` model (``model.save('x.h5')``, legacy Nadam): groups
  ``model_weights`` and ``optimizer_weights``, see `legacy_h5_file`.
* TF checkpoint (``tf.train.Checkpoint(model=..., optimizer=...).save(prefix)``,
  a prefix, or a SavedModel directory) of a tf-keras legacy Nadam, read in
  `optax_nadam.interop.tf_checkpoint`.

Each reader returns a `KerasFile`: the trainable weights in the file's order
(which is the order the optimizer holds its slots in), and the optimizer state
and config when the file has them.
"""

import json
import os
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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


class FileFormatError(ValueError):
  """A file that is not (or no longer) one of the formats `read` knows."""


def read(path: Any) -> KerasFile:
  """Reads a Keras 3 archive, a tf-keras ``.h5`` model or a TF checkpoint.

  Args:
    path: a ``.keras`` file, an ``.h5`` file, a TF checkpoint prefix (or its
      ``.index`` file), a directory holding a ``checkpoint`` file, or a
      SavedModel directory.

  Returns:
    A `KerasFile`.

  Raises:
    FileNotFoundError: nothing at `path` (nor a checkpoint with that prefix).
    FileFormatError: another format, a truncated or damaged file.
  """
  path = os.fspath(path)
  if os.path.isdir(path) or os.path.exists(path + ".index") or path.endswith(".index"):
    from optax_nadam.interop import tf_checkpoint

    return tf_checkpoint.read(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path}: no such file, directory or TF checkpoint prefix (no {path}.index).")
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(_ZIP_MAGIC):
    from optax_nadam.interop import keras3_archive

    return keras3_archive.read(path)
  if head == _HDF5_MAGIC:
    return legacy_h5_file(path)
  raise FileFormatError(
      f"{path} is not a Keras 3 archive (.keras, a zip), a tf-keras HDF5 model (.h5) or a "
      f"TF checkpoint (it starts with {head!r}).")


def h5py_module():
  import h5py  # a dependency of keras and tensorflow; imported only to read files

  return h5py


def array(ds: Any) -> np.ndarray:
  return np.array(ds[()], copy=True)


def damaged(path: str, what: str, err: Exception) -> FileFormatError:
  return FileFormatError(f"{path} looks like {what} but cannot be read ({type(err).__name__}: "
                         f"{err}); is it truncated or damaged?")


# ------------------------------------------------------------- tf-keras legacy .h5


def _text(x: Any) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)


def legacy_h5_file(path: str) -> KerasFile:
  """Reads a tf-keras ``.h5`` model (``model.save('x.h5')``).

  ``model_weights`` lists its layers (attribute ``layer_names``) and each layer
  its weights (``weight_names``); ``optimizer_weights`` lists the legacy Nadam's
  ``[iter, momentum_cache, m..., v...]`` (attribute ``weight_names``), the slots
  named ``<optimizer>/<weight>/m:0``. The trainable weights are those that have
  slots, in the slots' order; without optimizer weights, all weights in layer
  order.
  """
  h5py = h5py_module()
  try:
    with h5py.File(path, "r") as h5:
      return _legacy_from_h5(path, h5)
  except OSError as e:
    raise damaged(path, "an HDF5 file", e) from None


def _legacy_from_h5(path: str, h5: Any) -> KerasFile:
  if "model_weights" not in h5:
    if "layers" in h5 or "vars" in h5:
      raise FileFormatError(
          f"{path} is a Keras 3 weights file (.weights.h5) without its config; save the "
          "model with model.save('m.keras') to keep the optimizer's config and state.")
    raise FileFormatError(f"{path} is an HDF5 file but not a tf-keras model (no model_weights).")
  mw = h5["model_weights"]
  weights: Dict[str, np.ndarray] = {}
  for layer in mw.attrs.get("layer_names", []):
    g = mw[_text(layer)]
    for w in g.attrs.get("weight_names", []):
      weights[_text(w)] = array(g[_text(w)])
  training = json.loads(_text(h5.attrs["training_config"])) if "training_config" in h5.attrs \
      else {}
  opt = training.get("optimizer_config") or {}
  opt_name, opt_cfg = opt.get("class_name"), dict(opt.get("config") or {})
  if "optimizer_weights" not in h5 or opt_name is None:
    return KerasFile(path, "legacy", opt_name, opt_cfg, list(weights), list(weights.values()))
  ow = h5["optimizer_weights"]
  names = [_text(n) for n in ow.attrs.get("weight_names", [])]
  ms = [x for x in names if x.endswith("/m:0")]
  vs = [x for x in names if x.endswith("/v:0")]
  order = []
  for m in ms:
    var = m[:-4].split("/", 1)[-1] + ":0"  # drop the optimizer's name scope
    if var not in weights:
      raise FileFormatError(
          f"{path}: optimizer slot {m!r} belongs to {var!r}, which is not among the model's "
          f"saved weights {list(weights)[:6]}.")
    order.append(var)
  if not order:  # an optimizer without m slots: every saved weight, in layer order
    order = list(weights)
  nadam = opt_name == "Nadam" and opt_cfg.get("is_legacy_optimizer", True) is not False
  if opt_name == "Nadam" and not nadam:
    opt_name = "Nadam (tf_keras.optimizers.Nadam, not legacy)"
  if not nadam or len(names) < 2 or not names[1].endswith("/momentum_cache:0"):
    return KerasFile(path, "legacy", opt_name, opt_cfg, order, [weights[w] for w in order])
  if [x[:-4] for x in ms] != [x[:-4] for x in vs] or len(names) != 2 + 2 * len(ms):
    raise FileFormatError(
        f"{path}: the legacy Nadam's optimizer_weights {names[:6]} are not "
        "[iter, momentum_cache, m..., v...] with one m and one v per variable.")
  return KerasFile(
      path, "legacy", opt_name, opt_cfg, order, [weights[w] for w in order],
      count=int(array(ow[names[0]])), mu_product=float(array(ow[names[1]])),
      m=[array(ow[x]) for x in ms], v=[array(ow[x]) for x in vs])
