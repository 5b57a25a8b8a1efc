"""Reading a torch distributed checkpoint (DCP) directory without unpickling code.

``torch.distributed.checkpoint.save(state_dict, checkpoint_id=dir)`` writes
``dir/.metadata`` (a pickle of its `Metadata`: per flattened key its size or
"bytes", the file, offset and length holding it, and the path of the key in
the original nested dict) and ``dir/__<rank>_<n>.distcp`` files (each item
written by `torch.save`). torch reads ``.metadata`` with a plain
``pickle.load``, which would run any code a crafted file names; here it is
read with an unpickler that builds only the checkpoint-metadata classes and a
few harmless torch / stdlib values (sizes, dtypes, layouts, paths), and
refuses every other global by name. Each item is then read as its exact byte
span and loaded with ``torch.load(weights_only=True)``. The nested dict is
rebuilt from the metadata's key paths, so an optimizer's state comes back as
``{"state": {"0": {...}}, "param_groups": [...]}`` (string state keys, as DCP
writes them).
"""

import io
import os
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError

MAX_METADATA = 256 * 2**20
_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_MD, n) for n in ("Metadata", "TensorStorageMetadata", "TensorProperties",
                       "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                       "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
     ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
  def __init__(self, data: bytes, path: str):
    super().__init__(io.BytesIO(data))
    self.path = path

  def find_class(self, module: str, name: str) -> Any:
    import torch

    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
      return getattr(torch, name)
    if (module, name) not in _ALLOWED:
      raise FileFormatError(
          f"DCP metadata {self.path!r} names {module}.{name}, which is not a "
          "checkpoint-metadata class; refusing to unpickle it (it could run code).")
    return super().find_class(module, name)


def is_dcp(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def _metadata(path: str) -> Any:
  name = os.path.join(path, ".metadata")
  size = _files.regular_file(name, "DCP metadata")
  if size > MAX_METADATA:
    raise FileFormatError(f"DCP metadata {name!r} is {size} bytes; refusing (over "
                          f"{MAX_METADATA}).")
  with open(name, "rb") as f:
    data = f.read(size)
  try:
    md = _MetadataUnpickler(data, name).load()
  except FileFormatError:
    raise
  except Exception as e:  # pickle raises many types on damaged data
    raise FileFormatError(f"DCP metadata {name!r} cannot be read ({type(e).__name__}: {e}); "
                          "truncated or damaged?") from None
  for field in ("state_dict_metadata", "storage_data", "planner_data"):
    if not isinstance(getattr(md, field, None), dict):
      raise FileFormatError(f"DCP metadata {name!r} has no {field} dict; not a DCP checkpoint "
                            "written by torch.distributed.checkpoint.save.")
  return md


def _read_span(path: str, info: Any, key: str) -> Any:
  """One stored item: its exact bytes, loaded with ``torch.load(weights_only=True)``."""
  import torch

  rel = getattr(info, "relative_path", None)
  if (not isinstance(rel, str) or os.path.basename(rel) != rel or rel.startswith(".")
      or getattr(info, "transform_descriptors", None)):
    raise FileFormatError(f"DCP checkpoint {path!r}: item {key!r} is stored in {rel!r}, not a "
                          "plain data file of the directory.")
  name = os.path.join(path, rel)
  size = _files.regular_file(name, "DCP data file")
  offset, length = info.offset, info.length
  if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset
          and 0 <= length and offset + length <= size):
    raise FileFormatError(f"DCP checkpoint {path!r}: item {key!r} lies at bytes {offset}+"
                          f"{length} of {rel!r}, which has {size}; truncated or damaged.")
  with open(name, "rb") as f:
    f.seek(offset)
    raw = f.read(length)
  try:
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
  except Exception as e:
    raise FileFormatError(f"DCP checkpoint {path!r}: item {key!r} cannot be read with "
                          f"weights_only=True ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}).") from None


def _tensor(path: str, stored: Dict[str, List[Tuple[Any, Any]]], key: str, meta: Any) -> Any:
  """A tensor item, assembled from its chunks."""
  import torch

  size = tuple(int(n) for n in meta.size)
  chunks = {idx.offset: info for idx, info in stored.get(key, [])}
  if len(chunks) == 1 and tuple(next(iter(chunks)) or ()) in ((), (0,) * len(size)):
    t = _read_span(path, next(iter(chunks.values())), key)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != size:
      raise FileFormatError(f"DCP checkpoint {path!r}: item {key!r} is not a tensor of the "
                            f"declared size {size}.")
    return t
  out = torch.empty(size, dtype=meta.properties.dtype)
  filled = 0
  for offset, info in chunks.items():
    t = _read_span(path, info, key)
    if not isinstance(t, torch.Tensor) or len(offset) != len(size) or any(
        o + n > s for o, n, s in zip(offset, t.shape, size)):
      raise FileFormatError(f"DCP checkpoint {path!r}: a chunk of {key!r} does not fit its "
                            f"declared size {size}.")
    out[tuple(slice(o, o + n) for o, n in zip(offset, t.shape))] = t
    filled += t.numel()
  if filled != int(np.prod(size)):
    raise FileFormatError(f"DCP checkpoint {path!r}: the chunks of {key!r} cover {filled} of "
                          f"its {int(np.prod(size))} elements.")
  return out


def _place(root: Dict, keys: Tuple, value: Any) -> None:
  node = root
  for k in keys[:-1]:
    node = node.setdefault(k, {})
  node[keys[-1]] = value


def _lists(x: Any) -> Any:
  """Dicts whose keys are 0..n-1 (ints: list positions in the original) become lists."""
  if not isinstance(x, dict):
    return x
  x = {k: _lists(v) for k, v in x.items()}
  if x and all(isinstance(k, int) for k in x) and sorted(x) == list(range(len(x))):
    return [x[i] for i in range(len(x))]
  return x


def read(path: Any) -> Dict[str, Any]:
  """The nested state dict a DCP directory holds (tensors as CPU tensors).

  Args:
    path: the directory ``torch.distributed.checkpoint.save`` wrote.

  Returns:
    The nested dict that was saved (e.g. ``{"model": {...}, "optimizer": {...}}``),
    in the order its keys were saved.

  Raises:
    FileFormatError: metadata naming another class, damaged or truncated
      items, items outside the directory.
  """
  path = os.fspath(path)
  md = _metadata(path)
  root: Dict[Any, Any] = {}
  stored: Dict[str, List[Tuple[Any, Any]]] = {}  # fqn -> [(index, storage info), ...]
  for idx, info in md.storage_data.items():
    stored.setdefault(getattr(idx, "fqn", None), []).append((idx, info))
  for key, meta in md.state_dict_metadata.items():
    keys = md.planner_data.get(key, (key,))
    if not isinstance(keys, tuple) or not keys or not all(isinstance(k, (str, int))
                                                          for k in keys):
      raise FileFormatError(f"DCP checkpoint {path!r}: key {key!r} has no valid path.")
    if type(meta).__name__ == "TensorStorageMetadata":
      value = _tensor(path, stored, key, meta)
    else:
      infos = [info for _, info in stored.get(key, [])]
      if len(infos) != 1:
        raise FileFormatError(f"DCP checkpoint {path!r}: item {key!r} is stored "
                              f"{len(infos)} times.")
      value = _read_span(path, infos[0], key)
    _place(root, keys, value)
  return _lists(root)
