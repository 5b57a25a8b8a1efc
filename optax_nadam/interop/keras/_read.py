"""Read model weights and Nadam state from Keras / TF files, without the model's code.

Three formats, each read as plain data (zipfile, json, h5py,
`tf.train.load_checkpoint`; nothing is imported by name, unpickled or eval'd,
so custom layer classes need not be importable):

* Keras 3 ``.keras`` archive (``model.save('m.keras')``): ``config.json`` (the
  optimizer's config is ``compile_config.optimizer``) and ``model.weights.h5``,
  read in `optax_nadam.interop.keras._keras3`.
* tf-keras ``.h5`` model (``model.save('x.h5')``, legacy Nadam): groups
  ``model_weights`` and ``optimizer_weights``, read in `optax_nadam.interop.keras._h5_legacy`.
* TF checkpoint (``tf.train.Checkpoint(model=..., optimizer=...).save(prefix)``,
  a prefix, or a SavedModel directory) of a tf-keras legacy Nadam, read in
  `optax_nadam.interop.keras._tf_checkpoint`.

Each reader returns a `KerasFile`: the trainable weights in
``model.trainable_variables`` order (the order a Keras optimizer creates its
slots in), each moment paired with its weight as the format proves it (names,
object-graph edges, the config's layer order, or shapes that leave one
pairing) or the file refused; and the optimizer state and config when the
file has them.
"""

import os
import stat
from typing import Any, Callable, Optional

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError
from optax_nadam.interop.keras import _h5_legacy, _keras3, _tf_checkpoint
from optax_nadam.interop.keras._kerasfile import HDF5_MAGIC, ZIP_MAGIC, KerasFile

__all__ = ["FileFormatError", "KerasFile", "read"]


def read(path: Any, budget: Optional[_files.Budget] = None) -> KerasFile:
  """Reads a Keras 3 archive, a tf-keras ``.h5`` model or a TF checkpoint.

  Args:
    path: a ``.keras`` file, an ``.h5`` file, a TF checkpoint prefix (or its
      ``.index`` file), a directory holding a ``checkpoint`` file, or a
      SavedModel directory.
    budget: what the import may read (`_files.Budget.like(like)`: datasets of
      like's shapes only); None: at most the file's own size.

  Returns:
    A `KerasFile`.

  Raises:
    FileNotFoundError: nothing at `path` (nor a checkpoint with that prefix).
    IsADirectoryError: a directory that is not a TF checkpoint.
    FileFormatError: another format, a truncated, damaged or unsafe file (a
      FIFO or device, a symlink loop, external data, a dataset or zip member
      larger than the import needs; see `optax_nadam.interop._files`).
  """
  path = os.fspath(path)
  st = _files.stat_path(path)
  if (st is not None and stat.S_ISDIR(st.st_mode)) or path.endswith(".index") or (
      st is None and _files.stat_path(path + ".index") is not None):
    return _as_format_error(path, lambda: _tf_checkpoint.read(path, budget))
  if st is None:
    raise FileNotFoundError(
        f"{path}: no such file, directory or TF checkpoint prefix (no {path}.index).")
  with _files.open_regular(path) as f:
    head = f.read(8)
    size = os.fstat(f.fileno()).st_size
  reader = _keras3.read if head.startswith(ZIP_MAGIC) else _h5_legacy.read \
      if head == HDF5_MAGIC else None
  if reader is None:
    raise FileFormatError(
        f"{path} is not a Keras 3 archive (.keras, a zip), a tf-keras HDF5 model (.h5) or a "
        f"TF checkpoint (it starts with {head!r}).")
  with _files.reading(budget or _files.Budget.of_file(size), path):
    return _as_format_error(path, lambda: reader(path))


def _as_format_error(path: str, read_file: Callable[[], KerasFile]) -> KerasFile:
  """Runs a reader; a structure it did not expect (a missing key, a wrong type) is refused."""
  try:
    return read_file()
  except (KeyError, IndexError, TypeError, AttributeError, RecursionError) as e:
    raise FileFormatError(
        f"{path} does not have the structure its format promises ({type(e).__name__}: "
        f"{e}); is it damaged or hand-made?") from e
