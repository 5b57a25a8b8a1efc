"""The layers' variables of a ``.keras`` file in the order Keras 3 trains them (private).

Keras 3 creates the optimizer's variables in ``model.trainable_variables``
order: each layer's own trainable variables (in creation order), then its
sub-layers', depth first, in the order the model tracks them. The file keeps
that order only where something in it states it:

- a ``Sequential`` or ``Functional`` model saves its layers under ``layers/``
  first (``saving_lib._walk_saveable``), named by class in ``model.layers``
  order (``dense``, ``dense_1``, ...), and the config's ``layers`` list keeps
  that order: the groups are put back in it;
- a layer with at most one child holding variables has nothing to order.

Any other model or layer (a subclassed ``keras.Model``) is saved by attribute
name, alphabetically (``sorted(dir(obj))``), while its layers are tracked in the
order the code assigned them: the file cannot say which comes first. `walk`
records such groups; the reader then pairs only if the shapes leave one
pairing over every order of the layers (`line_up_any_order`), else refuses.

`line_up` picks, per layer, how many of its saved variables are trainable (a
layer saves its trainable variables first) so that they line up with the
optimizer's slot shapes, and refuses when more than one way fits.
"""

import re
from typing import Any, Dict, List, Optional, Tuple

from optax_nadam.interop._files import FileFormatError

# A unit: (path, number of trainable variables if known, [(name, dataset)]).
Unit = Tuple[str, Optional[int], List[Tuple[str, Any]]]

_ORDERED_MODELS = ("Sequential", "Functional")
_KERAS_MODULES = ("keras", "keras.models", "keras.src.models", "keras.src.models.functional",
                  "keras.src.models.sequential", "keras.layers", "keras.src.layers")


def _snake(name: str) -> str:
  """Keras's ``naming.to_snake_case``: the name a layer's group gets in the h5."""
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _natural(name: str) -> Tuple[str, int]:
  stem, _, num = name.rpartition("_")
  return (stem, int(num)) if num.isdigit() and stem else (name, -1)


def _is_ordered_model(cfg: Any) -> bool:
  """A Keras ``Sequential`` / ``Functional`` config, whose ``layers`` list is the order."""
  return (isinstance(cfg, dict) and cfg.get("class_name") in _ORDERED_MODELS
          and cfg.get("module", "keras") in _KERAS_MODULES
          and isinstance((cfg.get("config") or {}).get("layers"), list))


def _children_in_order(group: Any, cfg: Optional[Dict[str, Any]]) -> List[Tuple[str, Any]]:
  """The layer groups under ``.../layers``: the config's order, then the rest by name."""
  entries = cfg["config"]["layers"] if _is_ordered_model(cfg) else None
  order: List[Tuple[str, Any]] = []
  if entries is not None:
    used: Dict[str, int] = {}
    for entry in entries:
      stem = _snake(str(entry.get("class_name", ""))) if isinstance(entry, dict) else ""
      used[stem] = used.get(stem, -1) + 1
      name = stem if used[stem] == 0 else f"{stem}_{used[stem]}"
      if name in group:
        order.append((name, entry))
  seen = {n for n, _ in order}
  rest = sorted((k for k in group if k not in seen), key=_natural)
  return order + [(k, None) for k in rest]


_NOT_MODEL = ("optimizer", "compile_metrics", "compile_loss", "metrics", "loss", "_compile_loss",
              "_compile_metrics", "_loss_tracker")

# Names of the saved variables of common built-in layers (for messages); all trainable.
_VARIABLE_NAMES = {c: ("kernel", "bias") for c in (
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "Conv3DTranspose", "DepthwiseConv2D")}
_VARIABLE_NAMES["Embedding"] = ("embeddings",)
# Built-in layers whose last saved variables are not trainable (moving statistics).
_NON_TRAINABLE_TAIL = {"BatchNormalization": 2}


def _builtin(cfg: Any) -> Optional[str]:
  if not isinstance(cfg, dict) or cfg.get("module", "keras.layers") not in _KERAS_MODULES:
    return None
  return cfg.get("class_name")


def _variable_names(cfg: Optional[Dict[str, Any]], n: int) -> List[str]:
  """``<i>`` and, for a known built-in layer, the variable's name (``0 (kernel)``)."""
  cls = _builtin(cfg)
  c = cfg.get("config", {}) if isinstance(cfg, dict) else {}
  names: Tuple[str, ...] = _VARIABLE_NAMES.get(cls, ())
  if cls in ("BatchNormalization", "LayerNormalization"):
    names = (("gamma",) if c.get("scale", True) else ()) + (
        ("beta",) if c.get("center", True) else ()) + (
        ("moving_mean", "moving_variance") if cls == "BatchNormalization" else ())
  if len(names) != n:
    names = ()
  return [f"{i} ({names[i]})" if names else str(i) for i in range(n)]


def _trainable(cfg: Any, n: int) -> Optional[int]:
  """How many of a layer's `n` saved variables are trainable, when the config says."""
  if not isinstance(cfg, dict) or not isinstance(cfg.get("config"), dict):
    return None
  if cfg["config"].get("trainable") is False:
    return 0
  cls = _builtin(cfg)
  if cls in _NON_TRAINABLE_TAIL:
    return max(n - _NON_TRAINABLE_TAIL[cls], 0)
  if cls in _VARIABLE_NAMES or cls == "LayerNormalization":
    return n
  return None


def _has_vars(group: Any) -> bool:
  if "vars" in group and len(group["vars"]):
    return True
  return any(hasattr(group[k], "keys") and _has_vars(group[k]) for k in group if k != "vars")


def walk(group: Any, path: str, cfg: Optional[Dict[str, Any]], units: List[Unit],
         loose: List[str]) -> None:
  """Appends a `Unit` per layer in the order Keras tracks them (module docstring).

  Iterative over the layers of one model, recursive only in nesting depth.
  Groups whose children's order the file does not state (and that have two or
  more children with variables) are appended to `loose`.
  """
  if "vars" in group:
    own = group["vars"]
    dss = [own[k] for k in sorted(own, key=int)]
    units.append((f"{path}/vars" if path else "vars", _trainable(cfg, len(dss)),
                  list(zip(_variable_names(cfg, len(dss)), dss))))
  children: List[Tuple[str, Any, Any, bool]] = []  # (path, group, config, placed by config)
  if "layers" in group:
    for name, entry in _children_in_order(group["layers"], cfg):
      children.append((f"{path}/layers/{name}".lstrip("/"), group["layers"][name], entry,
                       entry is not None))
  for key in sorted(group, key=lambda k: f"~{k}" if k.startswith("_") else k):
    if key in ("vars", "layers") or (not path and key in _NOT_MODEL):
      continue
    if hasattr(group[key], "keys"):
      children.append((f"{path}/{key}".lstrip("/"), group[key], None, False))
  holding = [c for c in children if _has_vars(c[1])]
  if len(holding) > 1 and not all(placed for _, _, _, placed in holding):
    kind = cfg.get("class_name") if isinstance(cfg, dict) else None
    loose.append(f"{path or 'the model'} ({kind or 'a subclassed model or layer'}: "
                 f"{[p.rsplit('/', 1)[-1] for p, _, _, _ in holding][:8]})")
  for child_path, child, entry, _ in children:
    walk(child, child_path, entry, units, loose)


def _choices(unit: Unit, s: int, shapes: List[Tuple[int, ...]]) -> List[int]:
  """How many of the unit's variables can be the trainable ones from slot s on."""
  _, fixed, dss = unit
  k = 0
  while (k < len(dss) and s + k < len(shapes) and dss[k][1].dtype.kind == "f"
         and tuple(dss[k][1].shape) == shapes[s + k]):
    k += 1
  return list(range(k + 1)) if fixed is None else [fixed] if fixed <= k else []


def line_up(units: List[Unit], shapes: List[Tuple[int, ...]], path: str) -> List[Tuple[str, Any]]:
  """Each layer's trainable variables, lined up with the optimizer's slot `shapes`.

  A layer saves its trainable variables first (``vars/0``, ...), then the others
  (a BatchNormalization's moving statistics); the optimizer's slots follow the
  trainable ones in order. Each layer takes the number of variables the config
  states, or (custom layers) any number that lines the shapes up; exactly one
  way must fit. Dynamic programming over (layer, slot): no recursion, any depth.

  Raises:
    FileFormatError: no way, or more than one way, fits.
  """
  n_units, n = len(units), len(shapes)
  # ways[u][s]: in how many ways units[u:] line up with shapes[s:] (capped at 2).
  ways: List[Dict[int, int]] = [dict() for _ in range(n_units + 1)]
  ways[n_units][n] = 1
  reach = [{0}]
  for u in range(n_units):
    reach.append({s + k for s in reach[u] for k in _choices(units[u], s, shapes)})
  for u in range(n_units - 1, -1, -1):
    for s in reach[u]:
      total = sum(ways[u + 1].get(s + k, 0) for k in _choices(units[u], s, shapes))
      if total:
        ways[u][s] = min(total, 2)
  listing = [(p, [tuple(d.shape) for _, d in dss]) for p, _, dss in units]
  if not ways[0].get(0):
    raise FileFormatError(
        f"{path}: the layers' saved variables {listing[:12]}{' ...' if n_units > 12 else ''} "
        f"cannot be lined up with the optimizer's {n} slot shapes {shapes[:24]}.")
  if ways[0][0] > 1:
    raise FileFormatError(
        f"{path}: the layers' saved variables can be lined up with the optimizer's {n} slots "
        "in more than one way (custom layers whose config does not say which of their "
        "variables are trainable, with equal shapes), so which moment belongs to which "
        "weight is not proven. Load the model in Keras and pass it: resume_from_keras(model, "
        "like), or state_from_keras(model.optimizer, tx, params, "
        "var_list=model.trainable_variables).")
  out, s = [], 0
  for u, (upath, _, dss) in enumerate(units):
    k = next(k for k in _choices(units[u], s, shapes) if ways[u + 1].get(s + k))
    out.extend((f"{upath}/{name}", d) for name, d in dss[:k])
    s += k
  return out


class _OverBudget(Exception):
  pass


_ANY_ORDER_BUDGET = 200_000  # search states; a file past it is refused, not guessed
_ANY_ORDER_UNITS = 200  # layers; the search recurses once per layer it places


def line_up_any_order(units: List[Unit], shapes: List[Tuple[int, ...]]
                      ) -> Optional[List[Tuple[str, Any]]]:
  """The pairing with the slots when the layers' order is unknown, if shapes prove it.

  Each layer's trainable variables are contiguous among the optimizer's slots
  (``trainable_variables`` lists a layer's own variables together), so the
  true order is one of the orders of the layers. If exactly one pairing of
  slots with saved variables fits the shapes over all orders, it is the
  true one; otherwise (none, several, or too many to search) None.
  """
  n, n_units = len(shapes), len(units)
  if n_units > _ANY_ORDER_UNITS:
    return None
  must = sum(1 << u for u, (_, fixed, _) in enumerate(units) if fixed not in (None, 0))
  memo: Dict[Tuple[int, int], int] = {}

  def ways(s: int, used: int) -> int:  # pairings of shapes[s:] with unused layers, capped at 2
    if s == n:
      return 1 if used & must == must else 0
    if (s, used) not in memo:
      if len(memo) > _ANY_ORDER_BUDGET:
        raise _OverBudget
      total = 0
      for u in range(n_units):
        if not used >> u & 1:
          for k in _choices(units[u], s, shapes):
            total += ways(s + k, used | 1 << u) if k else 0
            if total >= 2:
              break
        if total >= 2:
          break
      memo[(s, used)] = min(total, 2)
    return memo[(s, used)]

  try:
    if ways(0, 0) != 1:
      return None
  except _OverBudget:
    return None
  out, s, used = [], 0, 0
  while s < n:
    u, k = next((u, k) for u in range(n_units) if not used >> u & 1
                for k in _choices(units[u], s, shapes) if k and ways(s + k, used | 1 << u))
    out.extend((f"{units[u][0]}/{name}", d) for name, d in units[u][2][:k])
    s, used = s + k, used | 1 << u
  return out


def unordered(path: str, loose: List[str]) -> FileFormatError:
  """The refusal for a file whose layers' order is not stated (a subclassed model)."""
  return FileFormatError(
      f"{path}: {loose[0]} saves its layers by attribute name (Keras 3 writes a subclassed "
      "model's layers in alphabetical order of their attributes), but the optimizer holds "
      "their variables in model.trainable_variables order (the order the code assigned the "
      "layers); nothing in the file pairs the two, and the variables' shapes fit more than "
      "one order of the layers (or none). Pairing by position could put moments on the "
      "wrong weights, so this file is refused. Either load the model in Keras "
      "(keras.saving.load_model, with its class importable) and pass the live model: "
      "resume_from_keras(model, like) pairs by variable identity; or save a Functional or "
      "Sequential model, whose .keras file lists its layers in order.")
