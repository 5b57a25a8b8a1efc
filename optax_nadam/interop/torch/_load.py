"""Reading what `torch.save` wrote, safely, and finding the model and optimizer in it.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``:
torch's restricted unpickler, which builds tensors, dicts, lists and numbers
only and refuses any other Python object (it could run code). A checkpoint is
either the state dict itself or a dict holding it under a conventional key
(``{"model": ..., "optimizer": ..., "epoch": 3}``); other entries (epoch,
scheduler, scaler) are ignored.
"""

import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from optax_nadam.interop import _files
from optax_nadam.interop._arrays import is_tensor
from optax_nadam.interop._files import FileFormatError

MODEL_KEYS = ("model", "model_state_dict", "state_dict")
OPTIMIZER_KEYS = ("optimizer", "optim", "optimizer_state_dict")


def is_path(x: Any) -> bool:
  """True for a str or os.PathLike (a file to read), False for an object."""
  return isinstance(x, (str, os.PathLike))


def load(path: Any) -> Any:
  """The object a `torch.save` file holds, read with ``weights_only=True`` on CPU.

  Args:
    path: a str or os.PathLike.

  Returns:
    What was saved (dicts, lists, tensors, numbers).

  Raises:
    FileNotFoundError: no such file (naming it).
    IsADirectoryError: a directory.
    ValueError: not a regular file (a FIFO, device or symlink loop:
      FileFormatError, `_files.open_regular`), not a torch file, truncated, or
      refused by ``weights_only`` because it holds other Python objects outside
      a Lightning ``hyper_parameters`` entry (naming what its pickle calls).
  """
  import torch

  name = os.fspath(path)
  try:
    f = _files.open_regular(name)  # refuses a FIFO, device or symlink loop without blocking
  except FileNotFoundError:
    raise FileNotFoundError(f"torch checkpoint {name!r} does not exist.") from None
  with f:
    try:
      if f.read(4) == b"PK\x03\x04":  # a torch.save zip: every member's sizes checked first
        _files.open_zip(f, repr(name)).close()
      f.seek(0)
      return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, KeyError)
      reason = str(e)
      if isinstance(e, FileFormatError):  # refused by _files before torch read a byte
        raise
      if "Weights only load failed" not in reason:
        raise ValueError(
            f"{name!r} is not a readable torch.save file (another format, or truncated): "
            f"{type(e).__name__}: {reason.splitlines()[0] if reason else ''}"
        ) from None
      calls = _files.pickle_globals(f)
  held, found = _with_inert_hyper_parameters(name)  # a Lightning ckpt's Path / Namespace
  if held is not None:
    return held
  detail = next((line.strip() for line in reason.splitlines()
                 if "GLOBAL" in line or "WeightsUnpickler error" in line),
                reason.splitlines()[0])
  outside = [g for g in calls if not g.startswith(("torch.", "collections.", "_codecs."))]
  if not outside and "GLOBAL" not in detail:  # no callable found: damaged, not malicious
    stop = reason.split("WeightsUnpickler error:")[-1].strip().splitlines()[0:1]
    raise ValueError(
        f"{name!r} is not a readable torch.save file (another format, or truncated): its "
        f"pickle stops torch's restricted unpickler ({stop[0] if stop else detail})."
    ) from None
  where = f"objects at {', '.join(found[:3])} (outside 'hyper_parameters'); " if found else ""
  raise ValueError(
      f"{name!r} holds Python objects other than tensors, dicts, lists and numbers, "
      f"so torch.load(weights_only=True) refused it (unpickling them could run code): {where}"
      + (f"its pickle calls {', '.join(outside[:5])}" if outside else "")
      + (f" ({detail}). " if outside and "GLOBAL" in detail else ". " if outside else f"{detail} ")
      + "Re-save the state dicts alone, e.g. torch.save({'model': "
      "model.state_dict(), 'optimizer': opt.state_dict()}, path); or, if you trust "
      "the file, load it yourself and pass the dicts."
  ) from None


class Inert:
  """Stands in for an object of a class a checkpoint names: built from nothing, runs nothing."""

  name = "?"

  def __new__(cls, *args, **kwargs):
    return object.__new__(cls)

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    pass

  def __repr__(self):
    return f"<{self.name}: not read>"


def _inert_paths(x: Any, path: str, out: list) -> None:
  if isinstance(x, Inert):
    out.append(f"{path} ({x.name})")
  elif isinstance(x, Mapping):
    for k, v in x.items():
      _inert_paths(v, f"{path}[{k!r}]", out)
  elif isinstance(x, (list, tuple)):
    for k, v in enumerate(x):
      _inert_paths(v, f"{path}[{k}]", out)


def _with_inert_hyper_parameters(name: str) -> Tuple[Any, list]:
  """A Lightning checkpoint whose ``hyper_parameters`` hold objects (a Path, a Namespace).

  ``weights_only=True`` refuses the whole file for them. Here each class the
  file names outside torch's allow-list is replaced by an `Inert` stand-in
  (nothing is imported or called), and the result is kept only if every
  stand-in lies inside the top-level ``hyper_parameters`` entry, which the
  import never reads.

  Returns:
    ``(the checkpoint, [])``, or ``(None, where the stand-ins outside
    hyper_parameters are)`` (the caller refuses the file).
  """
  import torch

  try:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(name)
    stand_ins = [(type("Inert", (Inert,), {"name": n}), n) for n in names]
    with torch.serialization.safe_globals(stand_ins):
      obj = torch.load(name, map_location="cpu", weights_only=True)
  except Exception:
    return None, []
  found: list = []
  _inert_paths({k: v for k, v in obj.items() if k != "hyper_parameters"}
               if isinstance(obj, Mapping) else obj, "", found)
  return (None, found) if found else (obj, [])


def _is_model_dict(x: Any) -> bool:
  return isinstance(x, Mapping) and bool(x) and all(
      isinstance(k, str) and (is_tensor(v) or isinstance(v, np.ndarray)) for k, v in x.items())


def _is_optimizer_dict(x: Any) -> bool:
  return isinstance(x, Mapping) and "state" in x and "param_groups" in x


def _find(obj: Any, test, key: Optional[str], keys: Sequence[str], what: str,
          source: str) -> Tuple[Any, str]:
  """``(value, where)`` of the entry of `obj` that `test` accepts."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{source} holds a {type(obj).__name__}; expected a dict (a {what} or "
                     "a checkpoint dict holding one).")
  if key is not None:
    if key not in obj:
      raise ValueError(f"{source} has no entry {key!r} (its keys: {sorted(map(str, obj))}).")
    if not test(obj[key]):
      raise ValueError(f"{source}[{key!r}] is not a {what}.")
    return obj[key], f"{source}[{key!r}]"
  if test(obj):
    return obj, source
  for k in keys:
    if k in obj and test(obj[k]):
      return obj[k], f"{source}[{k!r}]"
  raise ValueError(
      f"{source} holds no {what} at the top level nor under {list(keys)} (its keys: "
      f"{sorted(map(str, obj))}); pass key= to name the entry (both entries: "
      "key=(model entry, optimizer entry))."
  )


def model_dict(obj: Any, key: Optional[str], source: str) -> Tuple[Mapping, str]:
  """The model state dict (name -> tensor, in its order) in a checkpoint, and where."""
  return _find(obj, _is_model_dict, key, MODEL_KEYS, "model state dict (name -> tensor)",
               source)


def optimizer_dict(obj: Any, key: Optional[str], source: str) -> Tuple[Mapping, str]:
  """The optimizer state dict (``state`` and ``param_groups``) in a checkpoint, and where."""
  return _find(obj, _is_optimizer_dict, key, OPTIMIZER_KEYS,
               "optimizer state dict (with 'state' and 'param_groups')", source)
