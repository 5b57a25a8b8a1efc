"""What a read may allocate: the shapes `like` needs, and how many bytes in all."""

import contextlib
import contextvars
import math
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from optax_nadam.interop._files.errors import FileFormatError
from optax_nadam.interop._files.limits import (
  COPIES,
  SCALAR_SLACK_BYTES,
)


class Budget:
  """What a read may allocate: no array larger than `like` needs, and how many bytes in all.

  `like` (an import's params) allows datasets of at most as many elements as
  its largest leaf (a layout may reorder axes, not add elements), of a numeric
  dtype of at most 8 bytes, and at most `COPIES` copies of its leaves at 8
  bytes an element in all. The readers then match each array to its leaf by
  position and compare shapes and dtypes exactly, with messages naming both.
  Without `like`, the file's own size bounds the bytes read.
  """

  def __init__(self, total_bytes: int, max_elements: Optional[int] = None,
               leaves: Optional[int] = None):
    self.total, self.used = total_bytes, 0
    self.max_elements, self.leaves = max_elements, leaves

  @classmethod
  def like(cls, like: Any) -> "Budget":
    """The budget of an import into `like` (a params tree of arrays or ShapeDtypeStructs)."""
    import jax

    sizes = [math.prod(np.shape(x)) for x in jax.tree.leaves(like)]
    need = sum(sizes) * 8 * COPIES
    return cls(need + SCALAR_SLACK_BYTES, max(sizes, default=0), len(sizes))

  @classmethod
  def of_file(cls, nbytes: int) -> "Budget":
    """Any shapes, at most `nbytes` (the file's size) plus the scalars' slack in all."""
    return cls(nbytes + SCALAR_SLACK_BYTES)

  def charge(self, shape: Tuple[int, ...], dtype: Any, where: str) -> None:
    """Counts a dataset about to be read, or refuses it before a byte is read."""
    n = math.prod(shape)
    nbytes = n * np.dtype(dtype).itemsize
    if self.max_elements is not None and n > max(self.max_elements, 1):
      raise FileFormatError(
          f"{where} declares shape {tuple(shape)} {np.dtype(dtype)} ({n} elements), more than "
          f"any leaf of like holds (the largest of its {self.leaves} leaves has "
          f"{self.max_elements}); refused before reading it.")
    if self.used + nbytes > self.total:
      raise FileFormatError(
          f"{where} declares {nbytes} bytes; with the {self.used} read before, that passes the "
          f"{self.total} bytes this import may read "
          f"({'5 copies of like' if self.max_elements is not None else 'the file size'}).")
    self.used += nbytes


def _few(xs: Sequence[Any]) -> str:
  return ", ".join(map(str, xs[:8])) + (" ..." if len(xs) > 8 else "")


class _Reading(NamedTuple):
  budget: Optional[Budget]
  where: str


_READING: contextvars.ContextVar = contextvars.ContextVar("reading", default=None)


@contextlib.contextmanager
def reading(budget: Optional[Budget], where: str) -> Iterator[Budget]:
  """Sets the budget (kept when None and one is set) and the name datasets are read under."""
  outer = _READING.get()
  budget = budget or (outer.budget if outer is not None else None) or Budget.of_file(0)
  token = _READING.set(_Reading(budget, where))
  try:
    yield budget
  finally:
    _READING.reset(token)


def current() -> Tuple[Budget, str]:
  """The budget and name of the read in progress (outside one: 1 MiB, "a file")."""
  r = _READING.get()
  return (r.budget, r.where) if r is not None else (Budget.of_file(0), "a file")


