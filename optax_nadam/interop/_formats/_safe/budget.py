"""What a read may allocate: the shapes `like` needs, and how many bytes in all."""

import contextlib
import contextvars
import math
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from optax_nadam.interop._formats._safe.limits import (
  COPIES,
  SCALAR_SLACK_BYTES,
)
from optax_nadam.interop._formats._types import FileFormatError


class Budget:
  """What a read may allocate: the shapes the import needs, and how many bytes in all.

  `like` (an import's params) allows datasets of the shapes its leaves have
  (with a `layout`, of the element counts, since a layout may reorder axes),
  of a numeric dtype of at most 8 bytes, and at most `COPIES` copies of its
  leaves at 8 bytes an element. Without `like`, the file's own size bounds the
  bytes read.
  """

  def __init__(self, total_bytes: int, shapes: Optional[Sequence[Tuple[int, ...]]] = None,
               by_size: bool = False):
    self.total, self.used, self.by_size = total_bytes, 0, by_size
    self.shapes = None if shapes is None else sorted(set(map(tuple, shapes)))
    self.sizes = None if shapes is None else {math.prod(s) for s in self.shapes}

  @classmethod
  def like(cls, like: Any, layout: Any = None) -> "Budget":
    import jax

    shapes = [tuple(int(d) for d in np.shape(x)) for x in jax.tree.leaves(like)]
    need = sum(math.prod(s) for s in shapes) * 8 * COPIES
    return cls(need + SCALAR_SLACK_BYTES, shapes, by_size=layout is not None)

  @classmethod
  def of_file(cls, nbytes: int) -> "Budget":
    return cls(nbytes + SCALAR_SLACK_BYTES)

  def charge(self, shape: Tuple[int, ...], dtype: Any, where: str) -> None:
    """Counts a dataset about to be read, or refuses it before a byte is read."""
    n = math.prod(shape)
    nbytes = n * np.dtype(dtype).itemsize
    if n > 1 and self.shapes is not None:
      if not self.by_size and tuple(shape) not in self.shapes:
        raise FileFormatError(
            f"{where} declares shape {tuple(shape)} {np.dtype(dtype)}, which no params leaf has "
            f"(like's shapes: {_few(self.shapes)}); refused before reading it.")
      if self.by_size and n not in self.sizes:
        raise FileFormatError(
            f"{where} declares shape {tuple(shape)} ({n} elements), which no params leaf has "
            f"(like's sizes: {_few(sorted(self.sizes))}; a layout may reorder axes, not change "
            "the count); refused before reading it.")
    if self.used + nbytes > self.total:
      raise FileFormatError(
          f"{where} declares {nbytes} bytes; with the {self.used} read before, that passes the "
          f"{self.total} bytes this import may read "
          f"({'5 copies of like' if self.shapes is not None else 'the file size'}).")
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
  r = _READING.get()
  return (r.budget, r.where) if r is not None else (Budget.of_file(0), "a file")


