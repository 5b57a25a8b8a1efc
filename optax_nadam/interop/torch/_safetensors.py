"""A bounded reader of the safetensors format (Hugging Face ``model.safetensors``).

The format: 8 bytes, the little-endian length N of a JSON header; N bytes of
JSON ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
"__metadata__": {...}}``; then the tensors' raw little-endian bytes, at the
offsets counted from the end of the header. Written by us from that
specification (the `safetensors` package is not a dependency): the header is
size-capped and type-checked, every entry's offsets are checked against its
shape, its dtype and the file's size before any tensor is read, and a tensor
is read only when asked for (`SafetensorsFile.read`), with one bounded
``read`` of exactly its bytes.
"""

import json
import math
import os
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError

# The specification caps the header at 100 MB; real headers are kilobytes.
MAX_HEADER = 100 * 2**20
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


class _Span(NamedTuple):
  """One tensor of a safetensors file, as its header declares it."""

  dtype: str  # the format's name, e.g. "F32"
  shape: Tuple[int, ...]
  begin: int  # byte offsets in the file (absolute)
  end: int


def _entry(path: str, name: str, spec: Any, data_start: int, size: int) -> _Span:
  where = f"safetensors file {path!r}, tensor {name!r}"
  if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
    raise FileFormatError(f"{where}: its header entry is {str(spec)[:80]}; expected keys "
                          "dtype, shape, data_offsets.")
  dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
  if dtype not in _DTYPES:
    raise FileFormatError(f"{where}: dtype {dtype!r} is not one this reader knows "
                          f"({sorted(_DTYPES)}).")
  ints = lambda xs: isinstance(xs, list) and all(  # noqa: E731
      isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)
  if not ints(shape) or len(shape) > 16 or not ints(offsets) or len(offsets) != 2:
    raise FileFormatError(f"{where}: shape {str(shape)[:40]} / data_offsets {str(offsets)[:40]} "
                          "are not lists of non-negative integers.")
  begin, end = offsets
  nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
  if end - begin != nbytes or data_start + end > size:
    raise FileFormatError(
        f"{where}: data_offsets {offsets} do not hold {nbytes} bytes (shape {shape}, {dtype}) "
        f"inside the file ({size} bytes, data from byte {data_start}); truncated or damaged.")
  return _Span(dtype, tuple(shape), data_start + begin, data_start + end)


class SafetensorsFile:
  """A safetensors file's header, checked; tensors are read on demand.

  Args:
    path: the file.

  Raises:
    FileNotFoundError, IsADirectoryError: as named.
    FileFormatError: not a regular file, a header that is too large, not
      JSON or not the format's, offsets outside the file or overlapping.
  """

  def __init__(self, path: Any):
    self.path = os.fspath(path)
    size = _files.regular_file(self.path, "safetensors file")
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise FileFormatError(f"safetensors file {self.path!r} has {size} bytes: no header.")
      n = int.from_bytes(head, "little")
      if n > min(MAX_HEADER, size - 8):
        raise FileFormatError(
            f"safetensors file {self.path!r} declares a {n}-byte header but holds {size} bytes "
            f"(the format allows {MAX_HEADER}); not a safetensors file, or truncated.")
      raw = f.read(n)
    try:
      header = json.loads(raw.decode("utf8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
      raise FileFormatError(f"safetensors file {self.path!r}: its header is not JSON "
                            f"({type(e).__name__}).") from None
    if not isinstance(header, dict):
      raise FileFormatError(f"safetensors file {self.path!r}: its header is not a JSON object.")
    header.pop("__metadata__", None)
    self.entries: Dict[str, _Span] = {
        name: _entry(self.path, name, spec, 8 + n, size) for name, spec in header.items()}
    spans = sorted((e.begin, e.end, k) for k, e in self.entries.items() if e.end > e.begin)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
      if begin < end:
        raise FileFormatError(f"safetensors file {self.path!r}: tensors {a!r} and {b!r} "
                              "overlap; damaged.")

  def read(self, name: str) -> np.ndarray:
    """The tensor `name` as a numpy array (bfloat16 becomes float32)."""
    e = self.entries[name]
    with open(self.path, "rb") as f:
      f.seek(e.begin)
      raw = f.read(e.end - e.begin)
    if len(raw) != e.end - e.begin:
      raise FileFormatError(f"safetensors file {self.path!r}, tensor {name!r}: the file ended "
                            "early; truncated.")
    x = np.frombuffer(raw, _DTYPES[e.dtype]).reshape(e.shape)
    if e.dtype == "BF16":
      return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(x.dtype.newbyteorder("="))  # a private, native-order copy
