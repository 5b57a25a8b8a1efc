"""Reads a tf-keras ``.h5`` model (``model.save('x.h5')``, legacy Nadam) as plain data."""

from typing import Any, Dict

from optax_nadam.interop._formats import _config, _safe
from optax_nadam.interop._formats._types import (
    FileFormatError,
    KerasFile,
    array,
    damaged,
    h5py_module,
    text,
)


def read(path: str) -> KerasFile:
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
    with _safe.open_regular(path) as f, h5py.File(f, "r") as h5:
      _safe.vet_h5(h5, path)
      return _legacy_from_h5(path, h5)
  except (OSError, RuntimeError, ValueError) as e:  # what h5py / HDF5 raise on damage
    if isinstance(e, (FileFormatError, FileNotFoundError, IsADirectoryError)):
      raise
    raise damaged(path, "an HDF5 file", e) from None


def _legacy_from_h5(path: str, h5: Any) -> KerasFile:
  if "model_weights" not in h5:
    if "layers" in h5 or "vars" in h5:
      raise FileFormatError(
          f"{path} is a Keras 3 weights file (.weights.h5) without its config; save the "
          "model with model.save('m.keras') to keep the optimizer's config and state.")
    raise FileFormatError(f"{path} is an HDF5 file but not a tf-keras model (no model_weights).")
  mw = h5["model_weights"]
  weights: Dict[str, Any] = {}  # datasets, read once picked (`like` bounds what is read)
  for layer in mw.attrs.get("layer_names", []):
    g = mw[text(layer)]
    for w in g.attrs.get("weight_names", []):
      weights[text(w)] = g[text(w)]
  training = _safe.load_json(text(h5.attrs["training_config"]), f"{path}: training_config") \
      if "training_config" in h5.attrs else {}
  _config.check_training_config(training, path)
  opt = training.get("optimizer_config") or {}
  opt_name = _config.optimizer_name(opt) if opt.get("class_name") is not None else None
  opt_cfg = dict(opt.get("config") or {})
  if "optimizer_weights" not in h5 or opt_name is None:
    return KerasFile(path, "legacy", opt_name, opt_cfg, list(weights),
                     [array(d) for d in weights.values()])
  ow = h5["optimizer_weights"]
  names = [text(n) for n in ow.attrs.get("weight_names", [])]
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
    return KerasFile(path, "legacy", opt_name, opt_cfg, order, [array(weights[w]) for w in order])
  if [x[:-4] for x in ms] != [x[:-4] for x in vs] or len(names) != 2 + 2 * len(ms):
    raise FileFormatError(
        f"{path}: the legacy Nadam's optimizer_weights {names[:6]} are not "
        "[iter, momentum_cache, m..., v...] with one m and one v per variable.")
  return KerasFile(
      path, "legacy", opt_name, opt_cfg, order, [array(weights[w]) for w in order],
      count=int(array(ow[names[0]])), mu_product=float(array(ow[names[1]])),
      m=[array(ow[x]) for x in ms], v=[array(ow[x]) for x in vs])
