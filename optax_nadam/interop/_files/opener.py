"""Opening files: regular files only, never blocking on a FIFO; symlink loops named."""

import errno
import os
import stat
from typing import BinaryIO, Optional

from optax_nadam.interop._files.errors import FileFormatError
from optax_nadam.interop._files.limits import KINDS


def _os_error(path: str, e: OSError) -> Exception:
  if e.errno == errno.ELOOP:
    return FileFormatError(f"{path}: a symlink loop (too many levels of symbolic links).")
  if e.errno == errno.ENOENT:
    return FileNotFoundError(f"{path}: no such file or directory.")
  return e


def stat_path(path: str) -> Optional[os.stat_result]:
  """``os.stat(path)`` (following links); None when nothing is there; a loop is refused."""
  try:
    return os.stat(path)
  except OSError as e:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
      if os.path.islink(path):  # a dangling link: say where it points
        raise FileNotFoundError(
            f"{path} is a symlink to {os.readlink(path)!r}, which does not exist.") from None
      return None
    raise _os_error(path, e) from None


def check_regular(path: str, st: os.stat_result) -> None:
  """Refuses anything but a regular file: a directory, FIFO, device or socket (named)."""
  if stat.S_ISREG(st.st_mode):
    return
  if stat.S_ISDIR(st.st_mode):
    raise IsADirectoryError(f"{path} is a directory; expected a file.")
  kind = next((name for test, name in KINDS if test(st.st_mode)), "not a regular file")
  raise FileFormatError(f"{path} is {kind}, not a regular file; only regular files are read.")


def open_regular(path: str) -> BinaryIO:
  """Opens `path` for reading if it is a regular file, never blocking on a FIFO.

  The file is opened non-blocking and checked with ``fstat`` on the open
  descriptor, so a FIFO swapped in after a check cannot make the read hang.
  """
  flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
  try:
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
  except OSError as e:
    if e.errno == errno.EISDIR:
      raise IsADirectoryError(f"{path} is a directory; expected a file.") from None
    raise _os_error(path, e) from None
  try:
    check_regular(path, os.fstat(fd))
    if hasattr(os, "set_blocking"):
      os.set_blocking(fd, True)
  except BaseException:
    os.close(fd)
    raise
  return os.fdopen(fd, "rb")


def read_small(path: str, limit: int, what: str) -> bytes:
  """A small regular file's bytes (a TF ``checkpoint`` file), at most `limit` of them."""
  with open_regular(path) as f:
    data = f.read(limit + 1)
  if len(data) > limit:
    raise FileFormatError(f"{path} is over {limit} bytes; {what} is a few lines.")
  return data


def regular_file(path: str, what: str) -> int:
  """The size of `path`, a regular file (not a FIFO, device, directory or symlink loop).

  Checked on an open descriptor by `open_regular`, which never blocks on a FIFO.
  """
  try:
    with open_regular(path) as f:
      return os.fstat(f.fileno()).st_size
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} {path!r} does not exist.") from None
  except IsADirectoryError:
    raise IsADirectoryError(f"{what} {path!r} is a directory; expected a file.") from None
