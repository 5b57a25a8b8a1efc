"""JSON text: bounded in size and depth before it is parsed."""

from typing import Any

import numpy as np

from optax_nadam.interop._files.errors import FileFormatError
from optax_nadam.interop._files.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH


def json_depth(data: bytes, stop: int = MAX_JSON_DEPTH) -> int:
  """The nesting depth of JSON text (strings skipped), or `stop` + 1 once it passes `stop`."""
  arr = np.frombuffer(data, np.uint8)
  depth, deepest, in_string, escaped = 0, 0, False, False
  # Brackets inside strings do not count: mask them out with a scan over quotes.
  quotes = np.flatnonzero((arr == 34) | (arr == 92) | (arr == 91) | (arr == 93) |
                          (arr == 123) | (arr == 125))
  for i in quotes.tolist():
    c = data[i]
    if in_string:
      if escaped:
        escaped = False
      elif c == 92:
        escaped = True
      elif c == 34:
        in_string = False
      continue
    if c == 34:
      in_string = True
    elif c in (91, 123):
      depth += 1
      deepest = max(deepest, depth)
      if depth > stop:
        return stop + 1
    elif c in (93, 125):
      depth -= 1
  return deepest


def load_json(data: Any, where: str) -> Any:
  """Parses JSON text of at most 64 MiB and 200 levels, or raises `FileFormatError`."""
  raw = data.encode("utf8") if isinstance(data, str) else bytes(data)
  if len(raw) > MAX_JSON_BYTES:
    raise FileFormatError(f"{where} is {len(raw)} bytes of JSON; at most {MAX_JSON_BYTES}.")
  if json_depth(raw) > MAX_JSON_DEPTH:
    raise FileFormatError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; a Keras "
                          "config nests a few dozen.")
  import json

  try:
    return json.loads(raw)
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
    raise FileFormatError(f"{where} is not valid JSON ({type(e).__name__}: {e}).") from None


