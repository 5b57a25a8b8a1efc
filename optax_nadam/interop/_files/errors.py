"""The one error type of the file readers, and its message helpers (imports nothing)."""

from typing import Any


class FileFormatError(ValueError):
  """A file that is not (or no longer) one of the formats its reader knows, or an unsafe one."""


def damaged(path: str, what: str, err: Exception) -> FileFormatError:
  return FileFormatError(f"{path} looks like {what} but cannot be read ({type(err).__name__}: "
                         f"{err}); is it truncated or damaged?")


def text(x: Any) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)
