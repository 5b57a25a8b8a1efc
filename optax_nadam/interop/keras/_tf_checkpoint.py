"""Read a tf-keras legacy Nadam and its model from a TF checkpoint, without the model's code.

A checkpoint written by ``tf.train.Checkpoint(model=model, optimizer=opt).save(prefix)``
(or the ``variables/`` of a SavedModel directory) stores every variable under a
key derived from the object graph, and the object graph itself
(``_CHECKPOINTABLE_OBJECT_GRAPH``, a `TrackableObjectGraph` proto). Both are
read with `tf.train.load_checkpoint`; no object is restored.

The optimizer is the node holding ``m`` / ``v`` slot variables; a legacy Nadam
also has ``iter`` and ``momentum_cache`` children (a legacy Adam has not; a
``LossScaleOptimizer`` has them too, beside its ``loss_scale``). Each slot
names its variable's node (``original_variable_node_id``): moments and
weights are paired by these edges, never by position.

The trainable variables (the slots' originals) come in tf-keras's
``model.trainable_variables`` order, rebuilt from the object graph depth first:
a layer's own variables (its variable children, in creation order), then its
layers: ``layer-<i>`` children by i (``model.layers`` order, Sequential and
Functional models), else its children in the order the object graph lists
them, which is the order the layer tracked them (attribute assignment). The
graph's own listing of slots is breadth first (outer layers first), which is
not that order for nested models. Only the hyperparameters that are variables
are in a checkpoint: ``learning_rate``, ``beta_1``, ``beta_2`` and ``decay``
(psi); epsilon and clipping are not.
"""

import glob
import os
import re
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError
from optax_nadam.interop.keras import _config
from optax_nadam.interop.keras._kerasfile import (
  KerasFile,
  schedule_product,
  u_product_is_nadams,
)
from optax_nadam.interop.keras._kerasfile import tf_keras_nadam as tf_keras_nadam_text

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_HYPER = ("learning_rate", "beta_1", "beta_2", "decay", "epsilon")
_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")  # the footer of a TF table (.index) file


def _prefix(path: str) -> str:
  """The checkpoint prefix for a prefix, an ``.index`` file or a directory.

  A directory is resolved without TensorFlow: its SavedModel
  ``variables/variables.index``, or the prefix its ``checkpoint`` file names
  (which must stay inside the directory).
  """
  if path.endswith(".index"):
    return path[:-len(".index")]
  if os.path.isdir(path):
    saved_model = os.path.join(path, "variables", "variables")
    if _files.stat_path(saved_model + ".index") is not None:
      return saved_model
    state = os.path.join(path, "checkpoint")
    if _files.stat_path(state) is None:
      raise IsADirectoryError(
          f"{path} is a directory but not a TF checkpoint (no 'checkpoint' file) or a "
          "SavedModel (no variables/variables.index); pass a checkpoint prefix.")
    text = _files.read_small(state, 1 << 16, "a TF 'checkpoint' file").decode("utf8", "replace")
    found = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if found is None:
      raise FileFormatError(f"{state} names no model_checkpoint_path.")
    name = found.group(1).encode("latin-1", "replace").decode("unicode_escape", "replace")
    root = os.path.realpath(path)
    prefix = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, prefix]) != root:
      raise FileFormatError(f"{state} points outside its directory ({name!r}); refused.")
    return prefix
  return path


def _vet_files(path: str, prefix: str) -> int:
  """Checks the index and data shards are regular files; their total size (no TensorFlow)."""
  index = prefix + ".index"
  with _files.open_regular(index) as f:
    size = os.fstat(f.fileno()).st_size
    f.seek(max(size - 8, 0))
    if size < 48 or f.read(8) != _TABLE_MAGIC:
      raise FileFormatError(f"{index} is not a TF checkpoint index (no table footer); is {path} "
                            "truncated or damaged?")
  total = size
  for shard in glob.glob(glob.escape(prefix) + ".data-*"):
    with _files.open_regular(shard) as f:
      total += os.fstat(f.fileno()).st_size
  return total


def _dtype(tf_dtype: Any) -> np.dtype:
  try:
    return np.dtype(tf_dtype.as_numpy_dtype)
  except (AttributeError, TypeError):
    return np.dtype(np.float64)  # bfloat16 and other types numpy lacks: 8 bytes at most


def read(path: str, budget: Optional[_files.Budget] = None) -> KerasFile:
  """Reads a TF checkpoint of a tf-keras model and legacy Nadam (module docstring).

  Args:
    path: a checkpoint prefix, its ``.index`` file, a directory with a
      ``checkpoint`` file, or a SavedModel directory.
    budget: what may be read (`_files.Budget`); None: at most the files' size.

  Returns:
    A `KerasFile` of kind ``"legacy"``.

  Raises:
    FileNotFoundError: no checkpoint there.
    IsADirectoryError: a directory that is not a checkpoint (found without TensorFlow).
    FileFormatError: not a TF checkpoint, a damaged one, or no object graph; a
      file that is not regular, a ``checkpoint`` file pointing outside its
      directory, a variable larger than `budget` allows.
  """
  prefix = _prefix(path)
  if _files.stat_path(prefix + ".index") is None:
    raise FileNotFoundError(f"{path}: no TF checkpoint (no {prefix}.index).")
  size = _vet_files(path, prefix)
  with _files.reading(budget or _files.Budget.of_file(size), path) as limit:
    kf = _read(path, prefix, limit)
  saved_model = os.path.join("variables", "variables")
  if kf.optimizer != "Nadam" or kf.kind != "legacy" or not prefix.endswith(saved_model):
    return kf
  saved = saved_model_optimizer(path, prefix[:-len(saved_model)])
  if saved is None:
    return kf
  if _config.optimizer_name(saved) == "LossScaleOptimizer":
    saved = (saved.get("config") or {}).get("inner_optimizer") or {}
  if _config.optimizer_name(saved) != "Nadam" or not isinstance(saved.get("config"), dict):
    raise FileFormatError(f"{path}: keras_metadata.pb names the optimizer {saved!r}, but the "
                          "checkpoint holds a legacy Nadam's variables.")
  # The variables hold the values the run used last; the metadata the rest (epsilon, clipping).
  return kf._replace(config={**saved["config"], **kf.config})


def _varint(data: bytes, i: int) -> Tuple[int, int]:
  value = shift = 0
  while True:
    if i >= len(data) or shift > 63:
      raise FileFormatError("a protobuf varint runs past its message")
    b = data[i]
    value |= (b & 0x7F) << shift
    i, shift = i + 1, shift + 7
    if b < 0x80:
      return value, i


def _fields(data: bytes) -> List[Tuple[int, Any]]:
  """A protobuf message's (field number, value): varints as ints, the rest as bytes."""
  out, i = [], 0
  while i < len(data):
    key, i = _varint(data, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(data, i)
    elif wire in (1, 2, 5):
      size = 8 if wire == 1 else 4
      if wire == 2:
        size, i = _varint(data, i)
      if i + size > len(data):
        raise FileFormatError("a protobuf field runs past its message")
      value, i = data[i:i + size], i + size
    else:
      raise FileFormatError(f"protobuf wire type {wire} is not in a SavedMetadata message")
    out.append((number, value))
  return out


def saved_model_optimizer(path: str, directory: str) -> Optional[Dict[str, Any]]:
  """The optimizer config tf-keras saved in a SavedModel's ``keras_metadata.pb``, or None.

  ``keras_metadata.pb`` is a ``SavedMetadata`` message: ``nodes`` (field 1), each
  with ``node_path`` (3) and ``metadata`` (5, JSON); the ``root`` node's JSON has
  ``training_config.optimizer_config`` when the model was compiled. Read by a
  bounded wire-format walk (no protobuf classes, nothing imported by name).
  """
  meta = os.path.join(directory, "keras_metadata.pb")
  if _files.stat_path(meta) is None:
    return None
  where = f"{path}: keras_metadata.pb"
  data = _files.read_small(meta, _files.MAX_JSON_BYTES, "a SavedModel's keras_metadata.pb")
  try:
    nodes = [dict(_fields(node)) for number, node in _fields(data)
             if number == 1 and isinstance(node, bytes)]
  except FileFormatError as e:
    raise FileFormatError(f"{where}: {e}; is it damaged?") from None
  for node in nodes:
    if node.get(3) == b"root" and isinstance(node.get(5), bytes):
      root = _files.load_json(node[5], where)
      training = root.get("training_config") if isinstance(root, dict) else None
      if training is None:
        return None
      _config.check_training_config(training, where)
      opt = training.get("optimizer_config")
      return opt if isinstance(opt, dict) else None
  return None


def _read(path: str, prefix: str, budget: _files.Budget) -> KerasFile:
  import tensorflow as tf
  from tensorflow.core.protobuf import trackable_object_graph_pb2

  try:
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError, IndexError) as e:
    raise FileFormatError(
        f"{path} cannot be read as a TF checkpoint with its object graph ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); is it truncated or damaged?") from None

  def value(node_id: int) -> np.ndarray:
    keys = [a.checkpoint_key for a in graph.nodes[node_id].attributes
            if a.name == "VARIABLE_VALUE"]
    if not keys:
      raise FileFormatError(f"{path}: object graph node {node_id} holds no variable.")
    budget.charge(tuple(shapes.get(keys[0], ())), _dtype(dtypes.get(keys[0])),
                  f"{path}: variable {keys[0]}")
    try:
      return np.array(reader.get_tensor(keys[0]), copy=True)
    except (tf.errors.OpError, IndexError) as e:
      raise FileFormatError(
          f"{path}: variable {keys[0]!r} cannot be read ({type(e).__name__}); is the "
          "checkpoint truncated or damaged?") from None

  def key(node_id: int) -> str:
    keys = [a.checkpoint_key for a in graph.nodes[node_id].attributes]
    return keys[0].replace("/.ATTRIBUTES/VARIABLE_VALUE", "") if keys else f"node {node_id}"

  optimizers = [i for i, n in enumerate(graph.nodes) if n.slot_variables]
  if len(optimizers) > 1:
    raise FileFormatError(f"{path} holds {len(optimizers)} optimizers; expected one.")
  if not optimizers:
    # tf_keras.optimizers.Nadam (not legacy) keeps its moments in lists, not slots.
    tf_keras_nadam = [i for i, n in enumerate(graph.nodes) if {"_u_product", "_momentums"} <= {
        c.local_name for c in n.children}]
    ids = _variables_in_order(graph, set(tf_keras_nadam))
    weights = [key(i) for i in ids], [value(i) for i in ids]
    if not tf_keras_nadam:
      return KerasFile(path, "legacy", None, {}, *weights)
    children = {c.local_name: c.node_id for c in graph.nodes[tf_keras_nadam[0]].children}
    count = int(value(children["_iterations"])) if "_iterations" in children else 0
    u = float(value(children["_u_product"]))
    p = schedule_product(0.9, count)
    why = (f"its u-product is {u:.3g} where Nadam's momentum schedule gives {p:.3g} after "
           f"{count} steps (with tf-keras's default beta_1 0.9; the checkpoint does not store "
           "beta_1)" if not u_product_is_nadams(u, 0.9, count) else
           f"its u-product ({u:.3g}) is the schedule's, but the checkpoint numbers its moments "
           "without linking them to their variables")
    return KerasFile(path, "v3", "Nadam", {}, *weights, unusable=tf_keras_nadam_text(path, why))
  node = graph.nodes[optimizers[0]]
  children = {c.local_name: c.node_id for c in node.children}
  wrapper = "LossScaleOptimizer" if "loss_scale" in children else None
  slots: Dict[str, List[Any]] = {}
  for s in node.slot_variables:
    slots.setdefault(s.slot_name, []).append(s)
  config = {h: float(value(children[h])) for h in _HYPER if h in children}
  first = slots.get("m") or next(iter(slots.values()))
  originals = _model_order(path, graph, optimizers[0],
                           [s.original_variable_node_id for s in first])
  if "momentum_cache" not in children or sorted(slots) != ["m", "v"]:
    kind = "Adam" if sorted(slots) == ["m", "v"] else f"an optimizer with slots {sorted(slots)}"
    kind = f"{wrapper}({kind})" if wrapper else kind
    return KerasFile(path, "legacy", kind, config, [key(i) for i in originals],
                     [value(i) for i in originals], wrapper=wrapper)
  slot_of = {}
  for name in ("m", "v"):
    slot_of[name] = {s.original_variable_node_id: s.slot_variable_node_id for s in slots[name]}
    if len(slot_of[name]) != len(slots[name]) or set(slot_of[name]) != set(originals):
      raise FileFormatError(
          f"{path}: the optimizer's m and v slots are not one each per variable.")
  return KerasFile(
      path, "legacy", "Nadam", config, [key(i) for i in originals],
      [value(i) for i in originals], count=int(value(children["iter"])),
      mu_product=float(value(children["momentum_cache"])),
      m=[value(slot_of["m"][i]) for i in originals],
      v=[value(slot_of["v"][i]) for i in originals], wrapper=wrapper)


def _is_variable(node: Any) -> bool:
  return any(a.name == "VARIABLE_VALUE" for a in node.attributes)


def _layer_index(name: str) -> int:
  return int(name[len("layer-"):]) if name.startswith("layer-") and name[6:].isdigit() else -1


def _model_order(path: str, graph: Any, optimizer: int, originals: List[int]) -> List[int]:
  """`originals` in tf-keras's ``trainable_variables`` order (see the module docstring).

  Iterative depth-first walk (any depth) from the root, not entering the
  optimizer; each node is visited once (``layer-<i>`` and
  ``layer_with_weights-<j>`` name the same layer).

  Raises:
    FileFormatError: a slot's variable is not reachable from the model.
  """
  wanted = set(originals)
  seen, order = {optimizer}, []
  stack = [0]
  while stack:
    i = stack.pop()
    if i in seen:
      continue
    seen.add(i)
    if i in wanted:
      order.append(i)
    kids = [c for c in graph.nodes[i].children if c.local_name != "save_counter"]
    own = [c for c in kids if _is_variable(graph.nodes[c.node_id])]
    layers = sorted((c for c in kids if _layer_index(c.local_name) >= 0),
                    key=lambda c: _layer_index(c.local_name))
    rest = [c for c in kids if c not in own and c not in layers]
    stack.extend(c.node_id for c in reversed(own + layers + rest))
  if len(order) != len(wanted):
    missing = sorted(wanted - set(order))[:5]
    raise FileFormatError(
        f"{path}: the optimizer has slots for variables (object graph nodes {missing}) that "
        "the checkpoint's model does not reach; which weight is whose is not proven.")
  return order


def _variables_in_order(graph: Any, skip: Set[int]) -> List[int]:
  """Variable nodes reachable from the root, breadth-first, skipping ``save_counter``.

  `skip`: nodes not to enter (an optimizer without slot variables).
  """
  seen, order, queue = {0} | set(skip), [], [0]
  while queue:
    i = queue.pop(0)
    node = graph.nodes[i]
    if any(a.name == "VARIABLE_VALUE" for a in node.attributes):
      order.append(i)
    for c in node.children:
      if c.node_id not in seen and c.local_name != "save_counter":
        seen.add(c.node_id)
        queue.append(c.node_id)
  return order
