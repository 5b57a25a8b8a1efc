"""Read a Keras 3 ``.keras`` archive as data: weights, Nadam state, optimizer config.

``model.save('m.keras')`` writes a zip with ``config.json`` (the model's and,
under ``compile_config.optimizer``, the optimizer's config), ``metadata.json``
and ``model.weights.h5``. In the h5, each layer's variables are under
``layers/<name>/vars/<i>`` (``<name>`` is the snake-case class name, numbered
in ``model.layers`` order: ``dense``, ``dense_1``, ...), the optimizer's under
``optimizer/vars/<i>``. Nothing is imported by name: custom layer classes need
not exist here.
"""

import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from optax_nadam.interop._formats import _config, _safe
from optax_nadam.interop._formats._types import (
  FileFormatError,
  KerasFile,
  array,
  damaged,
  h5py_module,
)


def _snake(name: str) -> str:
  """Keras's ``naming.to_snake_case``: the name a layer's group gets in the h5."""
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _natural(name: str) -> Tuple[str, int]:
  stem, _, num = name.rpartition("_")
  return (stem, int(num)) if num.isdigit() and stem else (name, -1)


def _children_in_order(group: Any, cfg: Optional[Dict[str, Any]]) -> List[Tuple[str, Any]]:
  """The layer groups under ``.../layers`` in the model's order.

  Keras names them by class (``dense``, ``dense_1``, ...) in the order of
  ``model.layers``, which the config's ``layers`` list keeps; without a config
  the numbered names are sorted naturally.
  """
  entries = (cfg or {}).get("config", {}).get("layers") if isinstance(cfg, dict) else None
  order: List[Tuple[str, Any]] = []
  if isinstance(entries, list):
    used: Dict[str, int] = {}
    for entry in entries:
      stem = _snake(str(entry.get("class_name", "")))
      used[stem] = used.get(stem, -1) + 1
      name = stem if used[stem] == 0 else f"{stem}_{used[stem]}"
      if name in group:
        order.append((name, entry))
  seen = {n for n, _ in order}
  rest = sorted((k for k in group if k not in seen), key=_natural)
  return order + [(k, None) for k in rest]


_NOT_MODEL = ("optimizer", "compile_metrics", "compile_loss", "metrics", "loss", "_compile_loss",
              "_compile_metrics", "_loss_tracker")


# Names of the saved variables of common built-in layers (for messages).
_VARIABLE_NAMES = {c: ("kernel", "bias") for c in (
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "Conv3DTranspose", "DepthwiseConv2D")}
_VARIABLE_NAMES["Embedding"] = ("embeddings",)


def _variable_names(cfg: Optional[Dict[str, Any]], n: int) -> List[str]:
  """``vars/<i>`` and, for a known built-in layer, the variable's name (``vars/0 (kernel)``)."""
  cls = cfg.get("class_name") if isinstance(cfg, dict) else None
  c = cfg.get("config", {}) if isinstance(cfg, dict) else {}
  names: Tuple[str, ...] = _VARIABLE_NAMES.get(cls, ())
  if cls in ("BatchNormalization", "LayerNormalization"):
    names = (("gamma",) if c.get("scale", True) else ()) + (
        ("beta",) if c.get("center", True) else ()) + (
        ("moving_mean", "moving_variance") if cls == "BatchNormalization" else ())
  if len(names) != n:
    names = ()
  return [f"{i} ({names[i]})" if names else str(i) for i in range(n)]


# Built-in layers whose last saved variables are not trainable (moving statistics).
_NON_TRAINABLE_TAIL = {"BatchNormalization": 2}


def _walk(group: Any, path: str, cfg: Optional[Dict[str, Any]], units: List[Any]) -> None:
  """Appends ``(path, fixed, [datasets])`` per layer, in the order Keras tracks them.

  ``fixed`` is the number of trainable variables when the config says it
  (``trainable: false``: 0; a BatchNormalization: all but its moving
  statistics), else None.
  """
  fixed = None
  if isinstance(cfg, dict) and isinstance(cfg.get("config"), dict):
    if cfg["config"].get("trainable") is False:
      fixed = 0
    elif cfg.get("class_name") in _NON_TRAINABLE_TAIL and cfg.get("module", "keras.layers") in (
        "keras.layers", "keras.src.layers"):
      fixed = -_NON_TRAINABLE_TAIL[cfg["class_name"]]
  if "vars" in group:
    own = group["vars"]
    dss = [own[k] for k in sorted(own, key=int)]
    k = None if fixed is None else (max(len(dss) + fixed, 0) if fixed < 0 else fixed)
    units.append((f"{path}/vars" if path else "vars", k, list(zip(_variable_names(cfg, len(dss)),
                                                                  dss))))
  if "layers" in group:
    for name, entry in _children_in_order(group["layers"], cfg):
      _walk(group["layers"][name], f"{path}/layers/{name}".lstrip("/"), entry, units)
  for key in sorted(group, key=lambda k: f"~{k}" if k.startswith("_") else k):
    if key in ("vars", "layers") or (not path and key in _NOT_MODEL):
      continue
    if hasattr(group[key], "keys"):
      _walk(group[key], f"{path}/{key}".lstrip("/"), None, units)


def _line_up(units: List[Any], shapes: List[Tuple[int, ...]], path: str) -> List[Tuple[str, Any]]:
  """Picks each layer's trainable variables so that they line up with `shapes`.

  A layer saves its trainable variables first (``vars/0``, ...), then the others
  (a BatchNormalization's moving statistics); the optimizer's slots follow the
  trainable ones in order. Each layer takes the number of variables that makes
  the shapes line up (the config's when it says); when several ways fit,
  earlier layers take more.
  """
  n_units, n = len(units), len(shapes)
  ways: Dict[Tuple[int, int], bool] = {}

  def choices(u: int, s: int) -> List[int]:  # numbers of units[u]'s variables that match
    _, fixed, dss = units[u]
    k = 0
    while k < len(dss) and s + k < n and tuple(dss[k][1].shape) == shapes[s + k]:
      k += 1
    return list(range(k + 1)) if fixed is None else [fixed] if fixed <= k else []

  def fits(u: int, s: int) -> bool:  # can units[u:] line up with shapes[s:]?
    if u == n_units:
      return s == n
    if (u, s) not in ways:
      ways[(u, s)] = any(fits(u + 1, s + k) for k in choices(u, s))
    return ways[(u, s)]

  if not fits(0, 0):
    listing = [(p, [tuple(d.shape) for _, d in dss]) for p, _, dss in units]
    raise FileFormatError(
        f"{path}: the layers' saved variables {listing} cannot be lined up with the "
        f"optimizer's {n} slot shapes {shapes}.")
  out, s = [], 0
  for u, (upath, _, dss) in enumerate(units):
    k = max(k for k in choices(u, s) if fits(u + 1, s + k))
    out.extend((f"{upath}/{name}", d) for name, d in dss[:k])
    s += k
  return out


def read(path: str) -> KerasFile:
  """Reads a Keras 3 ``.keras`` archive (see the module docstring).

  The optimizer's variables (``optimizer/vars/<i>`` in ``model.weights.h5``) are
  ``iteration``, ``learning_rate`` (unless it is a schedule), the EMA averages
  (``use_ema``), the gradient accumulators (``gradient_accumulation_steps``), a
  ``momentum``, ``velocity`` pair per trainable variable, and the u-product.
  The trainable variables are the layers' (``layers/<name>/vars/<i>``) walked in
  the model's layer order (the config's ``layers`` lists), each layer's
  variables in their saved order; a layer's group is named after its class, and
  the classes are never imported.
  """
  h5py = h5py_module()
  try:
    with _safe.open_regular(path) as f, _safe.open_zip(f, path) as zf:
      names = zf.namelist()
      if "config.json" not in names or "model.weights.h5" not in names:
        raise FileFormatError(
            f"{path} is a zip but not a Keras 3 archive with its weights inside (it holds "
            f"{names[:6]}; a .keras file has config.json and model.weights.h5).")
      config = _safe.load_json(_safe.read_member(zf, "config.json", _safe.MAX_JSON_BYTES, path),
                               f"{path}: config.json")
      _config.check_model_config(config, f"{path}: config.json")
      where = f"{path}: model.weights.h5"
      with _safe.member_file(zf, f, "model.weights.h5", path) as blob, \
          h5py.File(blob, "r") as h5, _safe.reading(None, where):
        _safe.vet_h5(h5, where)
        return _keras3_from_h5(path, config, h5)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
    if isinstance(e, (FileFormatError, FileNotFoundError, IsADirectoryError)):
      raise
    raise damaged(path, "a Keras 3 archive (zip)", e) from None


def _optimizer_spec(path: str, config: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any]]:
  opt = (config.get("compile_config") or {}).get("optimizer")
  if opt is None:
    return None, {}
  if isinstance(opt, str):
    return opt, {}
  if not isinstance(opt, dict) or not isinstance(opt.get("config"), dict):
    raise FileFormatError(f"{path}: compile_config.optimizer is not a Keras config: {opt!r}")
  return _config.optimizer_name(opt), dict(opt["config"])


def _keras3_from_h5(path: str, config: Dict[str, Any], h5: Any) -> KerasFile:
  units: List[Any] = []
  _walk(h5, "", config, units)
  opt_name, opt_cfg = _optimizer_spec(path, config)
  opt_vars = []
  if "optimizer" in h5 and "vars" in h5["optimizer"]:
    group = h5["optimizer"]["vars"]
    opt_vars = [group[k] for k in sorted(group, key=int)]
  lr_var = not isinstance(opt_cfg.get("learning_rate"), dict)
  unbuilt = len(opt_vars) == 1 + lr_var  # compiled, saved before the first step: no slots
  if not opt_vars or unbuilt or opt_name is None or opt_name.lower() != "nadam":
    # Without a Nadam's slots to line up with, the config's hints decide; another
    # optimizer's state is refused by the caller, by name.
    picked = [(f"{p}/{name}", d) for p, fixed, dss in units
              for name, d in dss[:len(dss) if fixed is None else fixed]]
    return KerasFile(path, "v3", opt_name, opt_cfg, [p for p, _ in picked],
                     [array(d) for _, d in picked], count=0 if unbuilt else None)
  ema = bool(opt_cfg.get("use_ema"))
  k = int(opt_cfg.get("gradient_accumulation_steps") or 0)
  fixed, per = 2 + lr_var, 2 + ema + (k > 0)
  n, rem = divmod(len(opt_vars) - fixed, per)
  if rem or n < 0:
    raise FileFormatError(
        f"{path}: the Nadam's {len(opt_vars)} saved variables do not fit Keras 3's layout "
        f"(iteration{', learning_rate' if lr_var else ''}, {per} per variable, u_product).")
  start = 1 + lr_var
  ema_vars = opt_vars[start:start + n] if ema else None
  start += n if ema else 0
  acc_vars = opt_vars[start:start + n] if k else None
  start += n if k else 0
  ms, vs = opt_vars[start:start + 2 * n:2], opt_vars[start + 1:start + 2 * n:2]
  picked = _line_up(units, [tuple(m.shape) for m in ms], path)
  real = int(array(opt_vars[0]))
  return KerasFile(
      path, "v3", opt_name, opt_cfg, [p for p, _ in picked], [array(d) for _, d in picked],
      count=real // k if k else real, mu_product=float(array(opt_vars[-1])),
      m=[array(x) for x in ms], v=[array(x) for x in vs], mini_step=real % k if k else 0,
      accumulators=[array(x) for x in acc_vars] if acc_vars else None,
      ema=[array(x) for x in ema_vars] if ema_vars else None)
