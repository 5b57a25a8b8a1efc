"""Reads a tf-keras ``.h5`` model (``model.save('x.h5')``, legacy Nadam) as plain data."""

from typing import Any, Dict

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError, array, damaged, h5py_module, text
from optax_nadam.interop.keras import _config
from optax_nadam.interop.keras._kerasfile import KerasFile, tf_keras_nadam

LOSS_SCALE = "LossScaleOptimizer"


def read(path: str) -> KerasFile:
  """Reads a tf-keras ``.h5`` model (``model.save('x.h5')``).

  ``model_weights`` lists its layers (attribute ``layer_names``) and each layer
  its weights (``weight_names``); ``optimizer_weights`` lists the legacy Nadam's
  ``[iter, momentum_cache, m..., v...]`` (attribute ``weight_names``), the slots
  named ``<optimizer>/<weight>/m:0`` (``cond_1/<optimizer>/...`` inside a
  ``LossScaleOptimizer``, whose config holds the Nadam's as
  ``inner_optimizer``). The trainable weights are those that have slots, in
  the slots' order, which is the order the optimizer created them in
  (``model.trainable_variables`` at its first step); each slot is paired with
  its weight by name. Without optimizer weights, all weights in layer order.
  """
  h5py = h5py_module()
  try:
    with _files.open_regular(path) as f, h5py.File(f, "r") as h5:
      _files.vet_h5(h5, path)
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
      if text(w) in weights:
        raise FileFormatError(
            f"{path}: two of the model's weights are named {text(w)!r} (layers of nested "
            "models with the same names); the optimizer's slots name their variable, so "
            "which slot is whose is not proven. Give the layers unique names, or pass the "
            "live model: resume_from_keras(model, like).")
      weights[text(w)] = g[text(w)]  # a dataset handle: read (budgeted) only if returned
  training = _files.load_json(text(h5.attrs["training_config"]), f"{path}: training_config") \
      if "training_config" in h5.attrs else {}
  _config.check_training_config(training, path)
  opt = training.get("optimizer_config") or {}
  opt_name = _config.optimizer_name(opt) if opt.get("class_name") is not None else None
  opt_cfg = dict(opt.get("config") or {})
  wrapper = None
  if opt_name == LOSS_SCALE:  # tf_keras.mixed_precision.LossScaleOptimizer(inner)
    inner = opt_cfg.get("inner_optimizer")
    if not isinstance(inner, dict):
      raise FileFormatError(f"{path}: training_config's LossScaleOptimizer has no "
                            "inner_optimizer object.")
    inner_name = _config.optimizer_name(inner) if inner.get("class_name") is not None else None
    inner_cfg = inner.get("config") or {}
    if not isinstance(inner_cfg, dict):
      raise FileFormatError(f"{path}: training_config's inner_optimizer.config is not an "
                            "object.")
    wrapper, opt_name, opt_cfg = LOSS_SCALE, inner_name, dict(inner_cfg)
  if "optimizer_weights" not in h5 or opt_name is None:
    return KerasFile(path, "legacy", opt_name, opt_cfg, list(weights),
                     [array(d) for d in weights.values()], wrapper=wrapper)
  ow = h5["optimizer_weights"]
  names = [text(n) for n in ow.attrs.get("weight_names", [])]
  ms = [x for x in names if x.endswith("/m:0")]
  vs = [x for x in names if x.endswith("/v:0")]
  order = [_slot_owner(path, m, weights) for m in ms]
  if opt_cfg.get("is_legacy_optimizer") is False:
    # tf_keras.optimizers.Nadam (saved as "Custom>Nadam"): slots "<name>/m/<weight>".
    order = [w for w in (x.split("/m/", 1)[-1] for x in names if "/m/" in x) if w in weights]
    if opt_name in ("Nadam", "Custom>Nadam"):
      return KerasFile(path, "v3", "Nadam", opt_cfg, order or list(weights),
                       [array(weights[w]) for w in order or weights], wrapper=wrapper,
                       unusable=tf_keras_nadam(path, (
                           "its .h5 keeps the iteration count and m, v per variable but does "
                           "not save its u-product (tf-keras restarts it at 1.0 when it loads "
                           "this file)")))
  if not order:  # an optimizer without m slots: every saved weight, in layer order
    order = list(weights)
  nadam = opt_name == "Nadam" and opt_cfg.get("is_legacy_optimizer", True) is not False
  shown = f"{wrapper}({opt_name})" if wrapper else opt_name
  if not nadam or len(names) < 2 or not names[1].endswith("/momentum_cache:0"):
    return KerasFile(path, "legacy", shown, opt_cfg, order, [array(weights[w]) for w in order],
                     wrapper=wrapper)
  if [x[:-4] for x in ms] != [x[:-4] for x in vs] or len(names) != 2 + 2 * len(ms):
    raise FileFormatError(
        f"{path}: the legacy Nadam's optimizer_weights {names[:6]} are not "
        "[iter, momentum_cache, m..., v...] with one m and one v per variable.")
  return KerasFile(
      path, "legacy", opt_name, opt_cfg, order, [array(weights[w]) for w in order],
      count=int(array(ow[names[0]])), mu_product=float(array(ow[names[1]])),
      m=[array(ow[x]) for x in ms], v=[array(ow[x]) for x in vs], wrapper=wrapper)


def _slot_owner(path: str, slot: str, weights: Dict[str, Any]) -> str:
  """The model weight a slot ``<scopes>/<optimizer>/<weight>/m:0`` belongs to.

  The slot's name is the weight's name under the optimizer's name scope (and,
  inside a LossScaleOptimizer, its ``cond_1/`` scope): the owner is the weight
  with the longest name (without ``:0``) that the slot's name ends with after
  a ``/`` (a weight named ``kernel:0`` has the slot ``<optimizer>/kernel/m:0``;
  weight names are unique, checked above).
  """
  stem = slot[:-len("/m:0")]
  owners = sorted((w for w in weights if stem.endswith("/" + w.rsplit(":", 1)[0])),
                  key=len, reverse=True)[:1]
  if len(owners) != 1:
    raise FileFormatError(
        f"{path}: optimizer slot {slot!r} belongs to "
        f"none of the model's saved weights ({list(weights)[:6]}).")
  return owners[0]
