"""Read a Keras 3 ``.keras`` archive as data: weights, Nadam state, optimizer config.

``model.save('m.keras')`` writes a zip with ``config.json`` (the model's and,
under ``compile_config.optimizer``, the optimizer's config), ``metadata.json``
(``keras_version``) and ``model.weights.h5``. In the h5, each layer's variables
are under ``layers/<name>/vars/<i>`` (``<name>`` is the snake-case class name,
numbered in ``model.layers`` order: ``dense``, ``dense_1``, ...), the
optimizer's under ``optimizer/vars/<i>``. Which layer's variables come in which
order is `keras3_layers`'s job, the optimizer's variables `keras3_optimizer`'s.
Nothing is imported by name: custom layer classes need not exist here.
"""

import zipfile
from typing import Any, Dict, List

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError, array, damaged, h5py_module
from optax_nadam.interop.keras import _config, _keras3_layers, _keras3_optimizer
from optax_nadam.interop.keras._kerasfile import KerasFile


def read(path: str) -> KerasFile:
  """Reads a Keras 3 ``.keras`` archive (see the module docstring).

  The optimizer's variables are split by the layout of the Keras version that
  wrote the file (`keras3_optimizer`); the layers' trainable variables are
  walked in the model's order and lined up with the slots (`keras3_layers`);
  the classes are never imported.
  """
  h5py = h5py_module()
  try:
    with _files.open_regular(path) as f, _files.open_zip(f, path) as zf:
      names = zf.namelist()
      if "config.json" not in names or "model.weights.h5" not in names:
        raise FileFormatError(
            f"{path} is a zip but not a Keras 3 archive with its weights inside (it holds "
            f"{names[:6]}; a .keras file has config.json and model.weights.h5).")
      config = _files.load_json(_files.read_member(zf, "config.json", _files.MAX_JSON_BYTES, path),
                               f"{path}: config.json")
      _config.check_model_config(config, f"{path}: config.json")
      meta = _files.load_json(
          _files.read_member(zf, "metadata.json", _files.MAX_JSON_BYTES, path),
          f"{path}: metadata.json") if "metadata.json" in names else {}
      where = f"{path}: model.weights.h5"
      with _files.member_file(zf, f, "model.weights.h5", path) as blob, \
          h5py.File(blob, "r") as h5, _files.reading(None, where):
        _files.vet_h5(h5, where)
        return _keras3_from_h5(path, config, meta if isinstance(meta, dict) else {}, h5)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
    if isinstance(e, (FileFormatError, FileNotFoundError, IsADirectoryError)):
      raise
    raise damaged(path, "a Keras 3 archive (zip)", e) from None


def _keras3_from_h5(path: str, config: Dict[str, Any], meta: Dict[str, Any],
                    h5: Any) -> KerasFile:
  units: List[Any] = []
  loose: List[str] = []
  version = _keras3_optimizer.version(meta)
  _keras3_layers.walk(h5, "", config, units, loose, version)
  spec = _keras3_optimizer.spec(path, config)
  opt_vars, wrapper = _keras3_optimizer.variables(h5, spec.wrapper)
  spec = spec._replace(wrapper=wrapper)
  opt_name, opt_cfg = spec.name, spec.config
  lr_var = not isinstance(opt_cfg.get("learning_rate"), dict)
  unbuilt = len(opt_vars) == 1 + lr_var  # compiled, saved before the first step: no slots
  if not opt_vars or unbuilt or opt_name is None or opt_name.lower() != "nadam":
    if loose:  # no slots' shapes to prove an order with
      raise _keras3_layers.unordered(path, loose)
    # Without a Nadam's slots to line up with, the config says which variables are
    # trainable; another optimizer's state is refused by the caller, by name.
    picked = []
    for p, fixed, dss in units:
      if fixed is None and dss:
        raise FileFormatError(
            f"{path}: the file holds no Nadam slots, and the config does not say which of "
            f"{p}'s saved variables are trainable (a custom layer); its weights cannot be "
            "paired with params leaves by position. Load the model in Keras and pass it: "
            "params_from_keras(model, like).")
      picked.extend((f"{p}/{name}", d) for name, d in dss[:fixed])
    name = f"{spec.wrapper}({opt_name})" if spec.wrapper and opt_name else opt_name
    return KerasFile(path, "v3", name, opt_cfg, [p for p, _ in picked],
                     [array(d) for _, d in picked], count=0 if unbuilt else None,
                     wrapper=spec.wrapper)
  slots = _keras3_optimizer.nadam_slots(path, opt_vars, opt_cfg, version)
  shapes = [tuple(m.shape) for m in slots.m]
  if loose:
    picked = _keras3_layers.line_up_any_order(units, shapes)
    if picked is None:
      raise _keras3_layers.unordered(path, loose)
  else:
    picked = _keras3_layers.line_up(units, shapes, path)
  k = int(opt_cfg.get("gradient_accumulation_steps") or 0)
  count = slots.real_steps // k if k else slots.real_steps
  return KerasFile(
      path, "v3", opt_name, opt_cfg, [p for p, _ in picked], [array(d) for _, d in picked],
      count=count, mu_product=slots.u_product, m=slots.m, v=slots.v,
      mini_step=slots.real_steps % k if k else 0, accumulators=slots.accumulators,
      ema=slots.ema, wrapper=spec.wrapper,
      unusable=_keras3_optimizer.unusable(path, slots, opt_cfg, spec.wrapper, version))
