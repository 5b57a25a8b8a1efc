"""The layers' variables of a ``.keras`` file in the order Keras 3 trains them (private).

Keras 3 creates the optimizer's variables in ``model.trainable_variables``
order: each layer's own trainable variables (in creation order), then its
sub-layers', depth first, in the order the layer tracks them. The file keeps
that order only where something in it states it:

- a ``Sequential`` or ``Functional`` model saves its layers under ``layers/``
  first (``saving_lib._walk_saveable``), named by class in ``model.layers``
  order (``dense``, ``dense_1``, ...), and the config's ``layers`` list keeps
  that order: the groups are put back in it;
- Keras's own layers that hold layers (`_SUBLAYERS`: MultiHeadAttention,
  GroupQueryAttention, Bidirectional) create them in an order fixed by
  Keras, read from the source of every Keras 3 release the table covers
  (`_CHECKED`, against ``metadata.json``'s ``keras_version``);
- a layer with at most one child holding variables has nothing to order.

Any other model or layer (a subclassed ``keras.Model``, a custom layer holding
layers such as keras-hub's) is saved by attribute name, alphabetically, while
its layers are tracked in the order its code created them: the file cannot say
which comes first. `walk` records such groups; the reader then pairs only if
the shapes leave one pairing over every order of the layers
(`line_up_any_order`), else refuses.

Within a layer, Keras saves the variables created trainable, then the others;
``trainable_variables`` is the subsequence of them whose flag is set now. A
variable's own ``trainable`` flag is not saved, so for a custom layer any
subsequence may be the trainable one: `line_up` pairs only where the slot
shapes leave one. A built-in layer's are the ones its class creates trainable
(all, or a BatchNormalization's first two), unless its config says
``trainable: false`` (then none, sublayers included).
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
      cls = str(entry.get("class_name", "")) if isinstance(entry, dict) else ""
      stem = _snake(_PYTHON_CLASS.get(cls, cls))
      used[stem] = used.get(stem, -1) + 1
      name = stem if used[stem] == 0 else f"{stem}_{used[stem]}"
      if name in group:
        order.append((name, entry))
  seen = {n for n, _ in order}
  rest = sorted((k for k in group if k not in seen), key=_natural)
  return order + [(k, None) for k in rest]


# The h5 names a layer's group after its Python class; the config has its exported name.
_PYTHON_CLASS = {"GroupQueryAttention": "GroupedQueryAttention"}

_NOT_MODEL = ("optimizer", "compile_metrics", "compile_loss", "metrics", "loss", "_compile_loss",
              "_compile_metrics", "_loss_tracker")

# Names of the saved variables of common built-in layers; all of them trainable.
_VARIABLE_NAMES = {c: ("kernel", "bias") for c in (
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "Conv3DTranspose", "DepthwiseConv2D")}
_VARIABLE_NAMES["Embedding"] = ("embeddings",)
for _cell in ("LSTMCell", "GRUCell", "SimpleRNNCell"):
  _VARIABLE_NAMES[_cell] = ("kernel", "recurrent_kernel", "bias")
# Built-in layers whose last saved variables are not trainable (moving statistics).
_NON_TRAINABLE_TAIL = {"BatchNormalization": 2}

# Keras's own layers that hold layers: their sublayers' attributes (leading "_" dropped:
# 3.0 has no public properties) in the order the class creates them, which is their
# trainable_variables order; the file writes them alphabetically. Read from
# keras/src/layers/attention/*.py and rnn/bidirectional.py of Keras 3.0 to 3.15.
_ATTENTION = ("query_dense", "key_dense", "value_dense", "output_dense")
_SUBLAYERS = {"MultiHeadAttention": _ATTENTION, "GroupQueryAttention": _ATTENTION,
              "Bidirectional": ("forward_layer", "backward_layer")}  # configs name GQA so
_CHECKED = ((3, 0), (3, 15))  # the Keras versions whose classes `_SUBLAYERS` was read from
_RNN_CELLS = {"LSTM": "LSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleRNNCell"}


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


def _frozen(cfg: Any) -> bool:
  return isinstance(cfg, dict) and isinstance(cfg.get("config"), dict) and \
      cfg["config"].get("trainable") is False


def _trainable(cfg: Any, n: int, frozen: bool) -> Optional[int]:
  """How many of a layer's `n` saved variables are trainable (its first ones), if known.

  None: a custom layer, whose trainable variables may be any of its saved ones.
  """
  if frozen or _frozen(cfg):
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


def _known_order(cfg: Any, version: Optional[Tuple[int, int]], children: List[Any],
                 loose_text: List[str]) -> bool:
  """Puts a Keras class's sublayer groups in the order the class creates them (in place).

  Returns False (children untouched) for another class or a Keras version the
  table was not read from (a note for the refusal is appended to `loose_text`).
  """
  cls = _builtin(cfg)
  if cls not in _SUBLAYERS:
    return False
  if version is None or not _CHECKED[0] <= version <= _CHECKED[1]:
    shown = "an unknown Keras" if version is None else f"Keras {version[0]}.{version[1]}"
    loose_text.append(f"written by {shown}; the order {cls} creates its sublayers in was read "
                      f"from Keras {_CHECKED[0][0]}.{_CHECKED[0][1]} to "
                      f"{_CHECKED[1][0]}.{_CHECKED[1][1]}")
    return False
  order = {name: i for i, name in enumerate(_SUBLAYERS[cls])}
  rank = lambda c: order.get(c[0].rsplit("/", 1)[-1].lstrip("_"), len(order))  # noqa: E731
  if any(rank(c) == len(order) and _has_vars(c[1]) for c in children):
    return False  # a sublayer with variables the table does not know
  c = cfg.get("config") or {}
  sub = {"forward_layer": c.get("layer"), "backward_layer": c.get("backward_layer") or
         c.get("layer")} if cls == "Bidirectional" else {}
  children.sort(key=rank)
  for i, (p, g, entry, _) in enumerate(children):
    name = p.rsplit("/", 1)[-1].lstrip("_")
    if cls != "Bidirectional":
      entry = {"class_name": "EinsumDense", "module": "keras.layers", "config": {}}
    children[i] = (p, g, sub.get(name, entry), True)
  return True


def walk(group: Any, path: str, cfg: Optional[Dict[str, Any]], units: List[Unit],
         loose: List[str], version: Optional[Tuple[int, int]] = None,
         frozen: bool = False) -> None:
  """Appends a `Unit` per layer in the order Keras tracks them (module docstring).

  Iterative over the layers of one model, recursive only in nesting depth.
  Groups whose children's order the file does not state (and that have two or
  more children with variables) are appended to `loose`. `version` is the Keras
  that wrote the file; `frozen`: an enclosing layer's config says
  ``trainable: false``.
  """
  frozen = frozen or _frozen(cfg)
  if "vars" in group:
    own = group["vars"]
    dss = [own[k] for k in sorted(own, key=int)]
    units.append((f"{path}/vars" if path else "vars", _trainable(cfg, len(dss), frozen),
                  list(zip(_variable_names(cfg, len(dss)), dss))))
  children: List[Tuple[str, Any, Any, bool]] = []  # (path, group, config, placed by config)
  if "layers" in group:
    for name, entry in _children_in_order(group["layers"], cfg):
      children.append((f"{path}/layers/{name}".lstrip("/"), group["layers"][name], entry,
                       entry is not None))
  attributes: List[Tuple[str, Any, Any, bool]] = []
  for key in sorted(group, key=lambda k: f"~{k}" if k.startswith("_") else k):
    if key in ("vars", "layers") or (not path and key in _NOT_MODEL):
      continue
    if hasattr(group[key], "keys"):
      cell = _RNN_CELLS.get(_builtin(cfg)) if key == "cell" else None
      entry = {"class_name": cell, "module": "keras.layers", "config": {}} if cell else None
      attributes.append((f"{path}/{key}".lstrip("/"), group[key], entry, False))
  notes: List[str] = []
  _known_order(cfg, version, attributes, notes)
  children.extend(attributes)
  holding = [c for c in children if _has_vars(c[1])]
  if len(holding) > 1 and not all(placed for _, _, _, placed in holding):
    kind = cfg.get("class_name") if isinstance(cfg, dict) else None
    loose.append(f"{path or 'the model'} ({kind or 'a subclassed model or layer'}"
                 f"{', ' + notes[0] if notes else ''}: "
                 f"{[p.rsplit('/', 1)[-1] for p, _, _, _ in holding][:8]})")
  for child_path, child, entry, _ in children:
    walk(child, child_path, entry, units, loose, version, frozen)


Choices = Dict[int, Tuple[int, Tuple[int, ...]]]


def _is_float(ds: Any) -> bool:
  """A float dataset (Keras writes bfloat16 as 2 opaque bytes with a ``dtype`` attribute)."""
  return ds.dtype.kind == "f" or (ds.dtype.kind == "V" and ds.dtype.itemsize == 2 and
                                  getattr(ds, "attrs", {}).get("dtype") == "bfloat16")


def _choices(unit: Unit, s: int, shapes: List[Tuple[int, ...]]) -> Choices:
  """The unit's variables that can be the trainable ones for the slots from `s` on.

  ``{k: (ways, pick)}``: in how many ways (capped at 2) k of the unit's saved
  variables, in their order, fit ``shapes[s:s + k]``, and one such pick
  (indices). A known layer takes its first `fixed`; a custom layer any
  subsequence (counted by dynamic programming over (variable, slot)).
  """
  _, fixed, dss = unit
  room = len(shapes) - s

  def fits(i: int, j: int) -> bool:
    return _is_float(dss[i][1]) and tuple(dss[i][1].shape) == shapes[s + j]

  if fixed is not None:
    ok = fixed <= min(len(dss), room) and all(fits(i, i) for i in range(fixed))
    return {fixed: (1, tuple(range(fixed)))} if ok else {}
  top = min(len(dss), room)
  table = [[1] + [0] * top]  # table[i][j]: ways to fit shapes[s:s+j] with dss[:i]
  for i in range(len(dss)):
    prev = table[-1]
    table.append([1] + [min(prev[j] + (prev[j - 1] if fits(i, j - 1) else 0), 2)
                        for j in range(1, top + 1)])
  out: Choices = {}
  for k in range(top + 1):
    if table[-1][k]:
      pick, j = [], k
      for i in range(len(dss), 0, -1):
        if j and fits(i - 1, j - 1) and table[i - 1][j - 1]:
          pick.append(i - 1)
          j -= 1
      out[k] = (table[-1][k], tuple(reversed(pick)))
  return out


_FIX = (
    "Rebuild the model from its code in Keras, compile it with the same Nadam, build the "
    "optimizer and restore the file into it: model.compile(keras.optimizers.Nadam(...), loss); "
    "model.optimizer.build(model.trainable_variables); model.load_weights(path) (weights "
    "and the Nadam's state, paired by Keras itself); then resume_from_keras(model, like), "
    "which pairs by variable identity. (keras.saving.load_model(path) does the same for "
    "models whose compile() keeps the saved optimizer; keras-hub tasks compile a fresh one.)")


def _listing(units: List[Unit], which: List[int]) -> str:
  return ", ".join(f"{units[u][0]} {[tuple(d.shape) for _, d in units[u][2]]}"
                   for u in which[:6]) + (" ..." if len(which) > 6 else "")


def line_up(units: List[Unit], shapes: List[Tuple[int, ...]], path: str) -> List[Tuple[str, Any]]:
  """Each layer's trainable variables, lined up with the optimizer's slot `shapes`.

  The optimizer's slots follow the layers' trainable variables in order; each
  layer contributes the ones `_choices` allows. Exactly one way must fit.
  Dynamic programming over (layer, slot): no recursion, any depth.

  Raises:
    FileFormatError: no way, or more than one way, fits (naming the layers
      that can be paired more than one way).
  """
  n_units, n = len(units), len(shapes)
  options: List[Dict[int, Choices]] = [dict() for _ in range(n_units)]
  reach = [{0}]
  for u in range(n_units):
    for s in reach[u]:
      options[u][s] = _choices(units[u], s, shapes)
    reach.append({s + k for s in reach[u] for k in options[u][s]})
  # ways[u][s]: in how many ways units[u:] line up with shapes[s:] (capped at 2).
  ways: List[Dict[int, int]] = [dict() for _ in range(n_units + 1)]
  ways[n_units][n] = 1
  for u in range(n_units - 1, -1, -1):
    for s in reach[u]:
      total = sum(c * ways[u + 1].get(s + k, 0) for k, (c, _) in options[u][s].items())
      if total:
        ways[u][s] = min(total, 2)
  if not ways[0].get(0):
    listing = [(p, [tuple(d.shape) for _, d in dss]) for p, _, dss in units]
    raise FileFormatError(
        f"{path}: the layers' saved variables {listing[:12]}{' ...' if n_units > 12 else ''} "
        f"cannot be lined up with the optimizer's {n} slot shapes {shapes[:24]} (a built-in "
        "layer's variable frozen by its own trainable flag, which Keras does not save, would "
        f"do that). {_FIX}")
  if ways[0][0] > 1:
    # The layers that take part in more than one of the fitting pairings.
    ambiguous = [u for u in range(n_units) if sum(
        min(c, 2) for s in reach[u] if ways[u].get(s)
        for k, (c, _) in options[u][s].items() if ways[u + 1].get(s + k)) > 1]
    raise FileFormatError(
        f"{path}: the layers' saved variables can be lined up with the optimizer's {n} slots "
        f"in more than one way: {_listing(units, ambiguous)}. Keras saves every variable of "
        "a layer but not which of its saved variables are trainable now (a custom layer's; "
        "a variable's own trainable flag, set after it was created, is not in the file), "
        "and their shapes fit more than one choice, so which moment belongs to which weight "
        f"is not proven. {_FIX}")
  out, s = [], 0
  for u, (upath, _, dss) in enumerate(units):
    k, (_, pick) = next((k, o) for k, o in options[u][s].items() if ways[u + 1].get(s + k))
    out.extend((f"{upath}/{dss[i][0]}", dss[i][1]) for i in pick)
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
  cache: Dict[Tuple[int, int], Choices] = {}

  def options(u: int, s: int) -> Choices:
    if (u, s) not in cache:
      cache[(u, s)] = _choices(units[u], s, shapes)
    return cache[(u, s)]

  def ways(s: int, used: int) -> int:  # pairings of shapes[s:] with unused layers, capped at 2
    if s == n:
      return 1 if used & must == must else 0
    if (s, used) not in memo:
      if len(memo) > _ANY_ORDER_BUDGET:
        raise _OverBudget
      total = 0
      for u in range(n_units):
        if not used >> u & 1:
          for k, (c, _) in options(u, s).items():
            total += c * ways(s + k, used | 1 << u) if k else 0
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
    u, k, pick = next((u, k, o[1]) for u in range(n_units) if not used >> u & 1
                      for k, o in options(u, s).items() if k and ways(s + k, used | 1 << u))
    out.extend((f"{units[u][0]}/{units[u][2][i][0]}", units[u][2][i][1]) for i in pick)
    s, used = s + k, used | 1 << u
  return out


def unordered(path: str, loose: List[str]) -> FileFormatError:
  """The refusal for a file whose layers' order is not stated (a subclassed model)."""
  return FileFormatError(
      f"{path}: {loose[0]} holds layers whose order the file does not record. Keras 3 "
      "writes a model's or layer's sublayers in the order of their attribute names, except "
      "a Sequential's or Functional's layers (the config lists them) and those of Keras's "
      "own MultiHeadAttention, GroupQueryAttention and Bidirectional (their order is "
      "Keras's); the optimizer holds their variables in the order the code created them. "
      "The variables' shapes fit more than one order of the layers (or none), and pairing "
      f"by position could put moments on the wrong weights, so this file is refused. {_FIX}")
