"""Read model weights and Nadam state from Keras / TF files, without the model's code.

Three formats, each read as plain data (zipfile, json, h5py,
`tf.train.load_checkpoint`; nothing is imported by name, unpickled or eval'd,
so custom layer classes need not be importable):

* Keras 3 ``.keras`` archive (``model.save('m.keras')``): ``config.json`` (the
  optimizer's config is ``compile_config.optimizer``) and ``model.weights.h5``,
  read in `optax_nadam.interop._formats.keras3`.
* tf-keras ``.h5`` model (``model.save('x.h5')``, legacy Nadam): groups
  ``model_weights`` and ``optimizer_weights``, read in `optax_nadam.interop._formats.h5_legacy`.
* TF checkpoint (``tf.train.Checkpoint(model=..., optimizer=...).save(prefix)``,
  a prefix, or a SavedModel directory) of a tf-keras legacy Nadam, read in
  `optax_nadam.interop._formats.tf_checkpoint`.

Each reader returns a `KerasFile`: the trainable weights in
``model.trainable_variables`` order (the order a Keras optimizer creates its
slots in), each moment paired with its weight as the format proves it (names,
object-graph edges, the config's layer order, or shapes that leave one
pairing) or the file refused; and the optimizer state and config when the
file has them.
"""

import os
from typing import Any

from optax_nadam.interop._formats import h5_legacy, keras3, tf_checkpoint
from optax_nadam.interop._formats._types import (
    HDF5_MAGIC,
    ZIP_MAGIC,
    FileFormatError,
    KerasFile,
)

__all__ = ["FileFormatError", "KerasFile", "read"]


def read(path: Any) -> KerasFile:
  """Reads a Keras 3 archive, a tf-keras ``.h5`` model or a TF checkpoint.

  Args:
    path: a ``.keras`` file, an ``.h5`` file, a TF checkpoint prefix (or its
      ``.index`` file), a directory holding a ``checkpoint`` file, or a
      SavedModel directory.

  Returns:
    A `KerasFile`.

  Raises:
    FileNotFoundError: nothing at `path` (nor a checkpoint with that prefix).
    FileFormatError: another format, a truncated or damaged file.
  """
  path = os.fspath(path)
  if os.path.isdir(path) or os.path.exists(path + ".index") or path.endswith(".index"):
    return tf_checkpoint.read(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path}: no such file, directory or TF checkpoint prefix (no {path}.index).")
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(ZIP_MAGIC):
    return keras3.read(path)
  if head == HDF5_MAGIC:
    return h5_legacy.read(path)
  raise FileFormatError(
      f"{path} is not a Keras 3 archive (.keras, a zip), a tf-keras HDF5 model (.h5) or a "
      f"TF checkpoint (it starts with {head!r}).")


