"""Where a torch run's weights and optimizer state are: files, folders, dicts, live objects.

`open_checkpoint` reads a source once and returns a `Checkpoint`: the model
state dict as `Entry` objects (shape, how to read it, which tensors share
memory) in the stored order, whether that order is ``model.state_dict()``'s
(registration order), and the optimizer state dict. Sources:

* a live ``nn.Module`` / ``torch.optim.NAdam``, or a dict holding state dicts;
* a `torch.save` file (``weights_only=True``), including PyTorch Lightning
  ``.ckpt`` files (model under ``state_dict``, optimizers in the list
  ``optimizer_states``);
* a single ``.safetensors`` file (names sorted: not registration order);
* a Hugging Face Trainer-style folder: ``model.safetensors``,
  ``pytorch_model.bin``, or either sharded with its ``*.index.json``, plus
  ``optimizer.pt``;
* a torch distributed checkpoint (DCP) directory (`optax_nadam.interop.torch._dcp`).
"""

import json
import os
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from optax_nadam.interop import _files
from optax_nadam.interop._arrays import is_tensor, to_numpy
from optax_nadam.interop._files import FileFormatError
from optax_nadam.interop.torch import _dcp, _load
from optax_nadam.interop.torch._safetensors import SafetensorsFile

MAX_INDEX = 64 * 2**20
_HF_MODELS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")


class Entry(NamedTuple):
  """One model state-dict entry: its shape, a reader, and the identity of its memory."""

  shape: Tuple[int, ...]
  read: Callable[[], np.ndarray]
  tie: Any = None  # equal for entries that are one tensor (tied weights); None: unknown


class Checkpoint(NamedTuple):
  """What a torch source holds (either part may be None)."""

  model: Optional[Dict[str, Entry]]
  model_where: str
  ordered: bool  # the model dict proves registration order (`torch_made`)
  optimizer: Optional[Mapping]
  optimizer_where: str
  model_error: str = ""  # why no model state dict was found (model None)


def torch_made(sd: Mapping) -> bool:
  """True when `sd` proves it is ``module.state_dict()``'s, in registration order.

  torch keeps ``_metadata`` (one entry per module, in the pre-order it visits
  them) on the dict ``state_dict()`` returns, and `torch.save` keeps it; each
  key's module must follow that order. A plain dict (``safetensors.torch.
  load_file``, a dict comprehension, DCP) has none: its order proves nothing.
  """
  meta = getattr(sd, "_metadata", None)
  if not isinstance(meta, Mapping) or not meta:
    return False
  rank = {m: i for i, m in enumerate(meta)}
  last = -1
  for name in sd:
    r = rank.get(name.rpartition(".")[0]) if isinstance(name, str) else None
    if r is None or r < last:
      return False
    last = r
  return True


def _tensor_entries(sd: Mapping, where: str) -> Dict[str, Entry]:
  out = {}
  for name, t in sd.items():
    tie = None
    if is_tensor(t):
      tie = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
    out[name] = Entry(tuple(np.shape(t)), lambda t=t, n=name: to_numpy(
        t, f"{where}[{n!r}]"), tie)
  return out


def _safetensors_entries(paths) -> Dict[str, Entry]:
  out: Dict[str, Entry] = {}
  for path in paths:
    f = SafetensorsFile(path)
    for name, e in f.entries.items():
      if name in out:
        raise FileFormatError(f"{path!r}: tensor {name!r} is in two shards.")
      out[name] = Entry(e.shape, lambda f=f, n=name: f.read(n))
  return out


def _index(path: str) -> Dict[str, str]:
  """A sharded model's ``weight_map`` (name -> shard file in the same folder)."""
  size = _files.regular_file(path, "index file")
  if size > MAX_INDEX:
    raise FileFormatError(f"index file {path!r} is {size} bytes; refusing (over {MAX_INDEX}).")
  try:
    with open(path, "rb") as f:
      index = json.loads(f.read(size).decode("utf8"))
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    raise FileFormatError(f"index file {path!r} is not JSON ({type(e).__name__}).") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) and os.path.basename(v) == v and v
      and not v.startswith(".") for k, v in weight_map.items()):
    raise FileFormatError(f"index file {path!r} has no weight_map of names to shard files "
                          "in its folder.")
  return weight_map


def _hf_folder(path: str) -> Checkpoint:
  where = f"folder {path!r}"
  found = [n for n in _HF_MODELS if os.path.exists(os.path.join(path, n))]
  model, model_where, ordered = None, where, False
  if found:
    name = found[0]
    full = os.path.join(path, name)
    model_where = f"{where}: {name}"
    if name == "model.safetensors":
      model = _safetensors_entries([full])
    elif name == "pytorch_model.bin":
      sd = _load.model_dict(_load.load(full), None, model_where)[0]
      model, ordered = _tensor_entries(sd, model_where), torch_made(sd)
    else:
      shards = list(dict.fromkeys(_index(full).values()))
      if name.startswith("model.safetensors"):
        model = _safetensors_entries([os.path.join(path, s) for s in shards])
      else:
        model = {}
        for s in shards:
          sd = _load.model_dict(_load.load(os.path.join(path, s)), None,
                                      f"{where}: {s}")[0]
          model.update(_tensor_entries(sd, f"{where}: {s}"))
  optimizer, opt_where = None, where
  if os.path.exists(os.path.join(path, "optimizer.pt")):
    opt_where = f"{where}: optimizer.pt"
    optimizer = _load.optimizer_dict(
        _load.load(os.path.join(path, "optimizer.pt")), None, opt_where)[0]
  if model is None and optimizer is None:
    raise FileFormatError(
        f"{where} is not a checkpoint this reader knows: no .metadata (torch distributed "
        f"checkpoint), none of {list(_HF_MODELS)} and no optimizer.pt (a Hugging Face "
        "Trainer folder).")
  return Checkpoint(model, model_where, ordered, optimizer, opt_where)


def _optimizer_in(obj: Mapping, key: Union[None, str, int], where: str):
  """The optimizer state dict of a checkpoint dict (Lightning: ``optimizer_states``)."""
  if isinstance(obj, Mapping) and key is None and "state" in obj and "param_groups" not in obj:
    raise ValueError(f"{where} has no 'param_groups' key (keys: {sorted(map(str, obj))}).")
  states = obj.get("optimizer_states") if isinstance(obj, Mapping) else None
  if isinstance(states, (list, tuple)) and (key is None or isinstance(key, int)):
    if key is None and len(states) != 1:
      raise ValueError(f"{where}['optimizer_states'] holds {len(states)} optimizers; pass "
                       "key=<index> to choose one.")
    k = 0 if key is None else key
    if not 0 <= k < len(states):
      raise ValueError(f"{where}['optimizer_states'] has no optimizer {k}.")
    return _load.optimizer_dict(states[k], None, f"{where}['optimizer_states'][{k}]")
  return _load.optimizer_dict(obj, key, where)


def _from_object(obj: Any, where: str, key, want_model: bool,
                 want_optimizer: bool) -> Checkpoint:
  model_key, opt_key = key if isinstance(key, tuple) else (
      (None, key) if want_optimizer else (key, None))
  model = model_where = optimizer = None
  ordered, model_error = False, ""
  opt_where = where
  if want_model:
    try:
      sd, model_where = _load.model_dict(obj, model_key, where)
      model, ordered = _tensor_entries(sd, model_where), torch_made(sd)
    except ValueError as e:
      if not want_optimizer or model_key is not None:
        raise
      model_error = str(e)
  if want_optimizer:
    optimizer, opt_where = _optimizer_in(obj, opt_key, where)
  return Checkpoint(model, model_where or where, ordered, optimizer, opt_where, model_error)


def open_checkpoint(source: Any, key: Any = None, *, want_model: bool = True,
                    want_optimizer: bool = True) -> Checkpoint:
  """Reads a torch source once (see the module docstring).

  Args:
    source: a live module / optimizer, a dict, a file or folder path.
    key: the entry holding the optimizer state dict (or, with `want_optimizer`
      False, the model's); an int picks one of Lightning's ``optimizer_states``;
      a pair ``(model entry, optimizer entry)`` names both (None: looked for).
    want_model: look for the model state dict (missing: ``model`` is None
      when the optimizer is wanted too, else an error).
    want_optimizer: look for the optimizer state dict (missing: an error).

  Returns:
    A `Checkpoint`.
  """
  import sys

  torch = sys.modules.get("torch")
  if torch is not None and isinstance(source, torch.nn.Module):
    source = source.state_dict()
  if torch is not None and isinstance(source, torch.optim.Optimizer):
    if not isinstance(source, torch.optim.NAdam):
      raise TypeError(f"optimizer is a {type(source).__name__}; the import reads "
                      "torch.optim.NAdam (its momentum schedule and mu_product).")
    return Checkpoint(None, "the torch optimizer", False, source.state_dict(),
                      "the torch optimizer")
  if not _load.is_path(source):
    if not isinstance(source, Mapping):
      raise TypeError(
          "source must be a torch.optim.NAdam or nn.Module, a state dict, a checkpoint dict "
          f"or a file / folder path, got {type(source).__name__}.")
    return _from_object(source, "the torch state dict", key, want_model, want_optimizer)
  path = os.fspath(source)
  if os.path.isdir(path):
    if _dcp.is_dcp(path):
      return _from_object(_dcp.read(path), f"torch distributed checkpoint {path!r}", key,
                          want_model, want_optimizer)
    ck = _hf_folder(path)
    if want_optimizer and ck.optimizer is None:
      raise ValueError(f"folder {path!r} has no optimizer.pt (the optimizer state).")
    return ck
  if path.endswith(".safetensors"):
    return Checkpoint(_safetensors_entries([path]), f"safetensors file {path!r}", False,
                      None, path)
  return _from_object(_load.load(path), f"torch checkpoint {path!r}", key, want_model,
                      want_optimizer)
