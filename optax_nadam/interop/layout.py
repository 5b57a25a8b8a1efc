"""Array layouts and names: a torch ``fc1.weight`` as a Flax ``['fc1']['kernel']``.

A `layout` is any callable ``(params_leaf_path, array) -> array``: the import
calls it on every weight and on every moment (m, v) read from the peer, with
the `jax.tree_util.keystr` path of the params leaf it will fill, before
shapes are compared; so params and optimizer state get the same layout.

A layout that also has a ``leaf_name(peer_name, shape)`` method (as
`TorchToFlax` has) matches by name instead of by order: ``leaf_name`` maps a
torch state-dict key to the ``/``-joined keys of a params leaf (``"fc1.weight"``
-> ``"fc1/kernel"``), or to None to leave the entry out (batch-norm running
statistics are not params). Flax NNX's ``.value`` suffix is ignored, so
``nnx.state(model, nnx.Param)`` (whose leaves are sorted by name, not in
torch's order) matches too.
"""

import re
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

Layout = Callable[[str, np.ndarray], np.ndarray]

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _flax_last_key(path: str) -> str:
  """The last key of a keystr path, ignoring NNX's ``.value``: ``['fc1']['kernel']`` -> kernel."""
  keys = re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", path)
  names = [a or b or c for a, b, c in keys]
  while names and names[-1] == "value":
    names.pop()
  return names[-1] if names else ""


def torch_linear_to_flax(path: str, array: np.ndarray) -> np.ndarray:
  """Transposes every 2-D array: a torch ``Linear`` weight ``(out, in)`` -> ``(in, out)``.

  For params matched by order whatever their names (e.g. a list ``[w1, b1, w2,
  b2]`` of ``x @ w + b`` layers); other arrays pass unchanged.

  Args:
    path: the params leaf path (unused: every 2-D array is a Linear weight).
    array: a weight or moment read from the peer.

  Returns:
    The array in the Flax / ``x @ w`` layout.
  """
  del path
  return np.ascontiguousarray(array.T) if array.ndim == 2 else array


class TorchToFlax:
  """Layout and names from a torch ``nn.Module`` state dict to Flax (Linen or NNX) params.

  Names: ``a.b.weight`` -> ``a/b/kernel`` (2-D and up: Linear, Conv) or
  ``a/b/scale`` (1-D: LayerNorm, BatchNorm); ``bias`` stays ``bias``; keys in
  `rename` map as given (e.g. ``{"emb.weight": "emb/embedding"}``); entries
  whose last part is in `skip` (default: batch-norm running statistics) are
  left out. Layout: a leaf named ``kernel`` gets torch's ``(out, in, *window)``
  as Flax's ``(*window, in, out)`` (a transpose for Linear); others unchanged.

  Args:
    rename: torch key -> ``/``-joined params leaf keys, checked first.
    skip: last parts of torch keys that are not params.
  """

  def __init__(self, rename: Optional[Mapping[str, str]] = None,
               skip: Sequence[str] = _BUFFERS):
    self.rename: Dict[str, str] = dict(rename or {})
    self.skip = tuple(skip)

  def leaf_name(self, torch_key: str, shape: Tuple[int, ...]) -> Optional[str]:
    """The ``/``-joined params leaf keys for a torch state-dict key, or None to skip it."""
    if torch_key in self.rename:
      return self.rename[torch_key]
    *scope, last = torch_key.split(".")
    if last in self.skip:
      return None
    if last == "weight":
      last = "kernel" if len(shape) >= 2 else "scale"
    return "/".join([*scope, last])

  def __call__(self, path: str, array: np.ndarray) -> np.ndarray:
    if _flax_last_key(path) != "kernel" or array.ndim < 2:
      return array
    return np.ascontiguousarray(np.transpose(array, (*range(2, array.ndim), 1, 0)))

  def __repr__(self) -> str:
    return f"TorchToFlax(rename={self.rename!r}, skip={self.skip!r})"


torch_to_flax = TorchToFlax()
