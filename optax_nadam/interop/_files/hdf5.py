"""HDF5: a walk that follows no links, dataset vetting, reads within the budget."""

import math
from typing import Any

import ml_dtypes  # a dependency of jax
import numpy as np

from optax_nadam.interop._files.budget import _few, current
from optax_nadam.interop._files.errors import FileFormatError, text
from optax_nadam.interop._files.limits import BUILTIN_FILTERS, MAX_H5_DEPTH, MAX_H5_OBJECTS


def h5py_module():
  import h5py  # a dependency of keras and tensorflow; imported only to read files

  return h5py


def _link_error(where: str, name: str, link: Any) -> FileFormatError:
  h5py = h5py_module()
  if isinstance(link, h5py.ExternalLink):
    return FileFormatError(f"{where}: {name} is an HDF5 external link to {link.filename}:"
                           f"{link.path}; a checkpoint's objects are its own, refused.")
  if isinstance(link, h5py.SoftLink):
    return FileFormatError(f"{where}: {name} is an HDF5 soft link to {link.path}; Keras "
                           "writes no links (one could alias another variable), refused.")
  return FileFormatError(f"{where}: {name} is an HDF5 {type(link).__name__}; refused.")


def vet_dataset(ds: Any, where: str) -> None:
  """Refuses a dataset whose data is not stored in the file itself, in plain form."""
  h5py = h5py_module()
  dcpl = ds.id.get_create_plist()
  if dcpl.get_layout() == h5py.h5d.VIRTUAL:
    sources = sorted({f"{s.file_name}:{s.dset_name}" for s in ds.virtual_sources()})
    raise FileFormatError(f"{where}: dataset {ds.name} is a virtual dataset (its data is in "
                          f"{_few(sources)}); refused.")
  if dcpl.get_external_count():
    files = [dcpl.get_external(i)[0].decode("utf8", "replace")
             for i in range(min(dcpl.get_external_count(), 8))]
    raise FileFormatError(f"{where}: dataset {ds.name} keeps its data in other files {files} "
                          "(HDF5 external storage); a checkpoint holds its own data, refused.")
  for i in range(dcpl.get_nfilters()):
    code = dcpl.get_filter(i)[0]
    if code not in BUILTIN_FILTERS:
      raise FileFormatError(f"{where}: dataset {ds.name} uses HDF5 filter {code}, which is not "
                            "built in (HDF5 would load it as a plugin); refused.")


def vet_h5(h5: Any, where: str) -> None:
  """Walks an HDF5 file without following links; refuses links, cycles and unsafe datasets."""
  h5py = h5py_module()
  seen = {h5py.h5o.get_info(h5.id).addr: "/"}
  stack, count = [(h5, "/", 0)], 0
  while stack:
    group, path, depth = stack.pop()
    if depth > MAX_H5_DEPTH:
      raise FileFormatError(f"{where}: {path} nests {depth} groups deep; at most {MAX_H5_DEPTH}.")
    for key in group:
      count += 1
      if count > MAX_H5_OBJECTS:
        raise FileFormatError(f"{where} holds over {MAX_H5_OBJECTS} objects.")
      name = f"{path.rstrip('/')}/{key}"
      link = group.get(key, getlink=True)
      if not isinstance(link, h5py.HardLink):
        raise _link_error(where, name, link)
      obj = group[key]
      addr = h5py.h5o.get_info(obj.id).addr
      if addr in seen:
        raise FileFormatError(f"{where}: {name} is {seen[addr]} again (a hard link); Keras "
                              "writes each object once, refused.")
      seen[addr] = name
      if isinstance(obj, h5py.Group):
        stack.append((obj, name, depth + 1))
      elif isinstance(obj, h5py.Dataset):
        vet_dataset(obj, where)


def read_dataset(ds: Any) -> np.ndarray:
  """A vetted dataset's values as a fresh numpy array, within the current `Budget`.

  Checks the dtype (numbers of at most 8 bytes), then the declared shape
  against the budget, then that the file stores as many bytes as the dataset
  declares (unless compressed), before reading.
  """
  budget, where = current()
  dt = ds.dtype
  name = f"{where}: dataset {ds.name}"
  bfloat16 = dt.kind == "V" and dt.itemsize == 2 and text(ds.attrs.get("dtype", "")) == "bfloat16"
  if (dt.kind not in "fiub" and not bfloat16) or dt.itemsize > 8 or dt.fields is not None or \
      dt.subdtype:
    raise FileFormatError(f"{name} has dtype {dt}; weights and slots are numbers.")
  vet_dataset(ds, where)
  shape = tuple(int(d) for d in (ds.shape or ()))
  budget.charge(shape, dt, name)
  nbytes = math.prod(shape) * dt.itemsize
  plist = ds.id.get_create_plist()
  stored = ds.id.get_storage_size()
  if plist.get_nfilters() == 0 and stored < nbytes:
    raise FileFormatError(f"{name} declares {nbytes} bytes but stores {stored} (unwritten or "
                          "cut off); refused.")
  try:
    values = np.asarray(ds[()])  # a fresh array (a numpy scalar for shape ())
    # Keras 3 writes bfloat16 as 2 opaque bytes with a dtype attribute (H5IOStore).
    return values.view(ml_dtypes.bfloat16) if bfloat16 else values
  except OSError as e:
    raise FileFormatError(f"{name} cannot be read ({e}); is the file damaged?") from None


array = read_dataset  # a dataset's values, vetted and within the read's budget
