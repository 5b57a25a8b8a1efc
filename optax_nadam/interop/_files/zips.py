"""Zip archives: members checked before they are expanded, read with a limit or in place."""

import contextlib
import io
import os
import struct
import tempfile
import zipfile
from typing import Any, BinaryIO, Iterator, List, Tuple

from optax_nadam.interop._files.errors import FileFormatError
from optax_nadam.interop._files.limits import (
  BOMB_FLOOR_BYTES,
  BOMB_RATIO,
  MAX_MEMBERS,
  MIB,
)


def _local_header(f: BinaryIO, info: zipfile.ZipInfo) -> Tuple[int, int, int]:
  """``(data offset, local compressed size, local size)`` of a member, from its local header."""
  f.seek(info.header_offset)
  head = f.read(30)
  if len(head) < 30 or head[:4] != b"PK\x03\x04":
    raise zipfile.BadZipFile("no local file header where the central directory points")
  _, _, flags, _, _, _, _, csize, size, n, m = struct.unpack("<4s5H3I2H", head)
  if flags & 0x08:  # sizes in a data descriptor after the data: take the central ones
    csize, size = info.compress_size, info.file_size
  elif 0xFFFFFFFF in (csize, size):  # zip64: the sizes are in the extra field (numpy's savez)
    f.seek(info.header_offset + 30 + n)
    extra, big = f.read(m), []
    while len(extra) >= 4:
      tag, k = struct.unpack("<2H", extra[:4])
      if tag == 1:
        big = list(struct.unpack(f"<{min(k, 16) // 8}Q", extra[4:4 + min(k, 16) // 8 * 8]))
      extra = extra[4 + k:]
    if size == 0xFFFFFFFF and big:
      size = big.pop(0)
    if csize == 0xFFFFFFFF and big:
      csize = big.pop(0)
  return info.header_offset + 30 + n + m, csize, size


def open_zip(f: BinaryIO, where: str) -> zipfile.ZipFile:
  """A `zipfile.ZipFile` on `f` whose every member's declared sizes were checked.

  Refused: more than 10,000 members; a member that would inflate past 64 MiB at
  more than 100x its stored size (a decompression bomb); a local header whose
  sizes differ from the central directory's; a member past the end of the file.
  """
  zf = zipfile.ZipFile(f)
  infos = zf.infolist()
  if len(infos) > MAX_MEMBERS:
    raise FileFormatError(f"{where} is a zip of {len(infos)} members; at most {MAX_MEMBERS}.")
  end = os.fstat(f.fileno()).st_size
  for info in infos:
    name = info.filename
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
      raise FileFormatError(
          f"{where}: zip member {name!r} is stored (not compressed) but declares "
          f"{info.file_size} bytes and holds {info.compress_size}; is it damaged?")
    if info.file_size > BOMB_FLOOR_BYTES and info.file_size > BOMB_RATIO * info.compress_size:
      raise FileFormatError(
          f"{where}: zip member {name!r} declares {info.file_size} bytes from "
          f"{info.compress_size} stored (over {BOMB_RATIO}x); refused as a decompression bomb.")
    start, csize, size = _local_header(f, info)
    if (csize, size) != (info.compress_size, info.file_size):
      raise FileFormatError(
          f"{where}: zip member {name!r}: its local header declares {size} bytes "
          f"({csize} stored), the central directory {info.file_size} ({info.compress_size}).")
    if start + info.compress_size > end:
      raise FileFormatError(
          f"{where}: zip member {name!r} declares {info.compress_size} stored bytes from "
          f"offset {start}, past the end of the file ({end} bytes); is it truncated?")
  return zf


def _copy_member(zf: zipfile.ZipFile, name: str, out: Any, limit: int, where: str) -> None:
  """Copies member `name` into `out` in 1 MiB pieces, refusing past `limit` bytes."""
  info = zf.getinfo(name)
  if info.file_size > limit:
    raise FileFormatError(f"{where}: zip member {name!r} declares {info.file_size} bytes; "
                          f"at most {limit} are read.")
  n = 0
  try:
    with zf.open(name) as src:
      while True:
        piece = src.read(min(MIB, limit + 1 - n))
        if not piece:
          break
        n += len(piece)
        if n > min(limit, info.file_size):
          raise FileFormatError(f"{where}: zip member {name!r} holds more than the "
                                f"{info.file_size} bytes its headers declare.")
        out.write(piece)
    if n != info.file_size:
      raise FileFormatError(f"{where}: zip member {name!r} holds {n} bytes; its headers "
                            f"declare {info.file_size}.")
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
    if isinstance(e, FileFormatError):
      raise
    raise FileFormatError(f"{where}: zip member {name!r} cannot be read ({type(e).__name__}: "
                          f"{e}); is it truncated or damaged?") from None


def read_member(zf: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes:
  """A zip member's bytes, at most `limit` of them, whatever its headers say."""
  buf = io.BytesIO()
  _copy_member(zf, name, buf, limit, where)
  return buf.getvalue()


class _Window(io.RawIOBase):
  """Bytes ``[start, start + size)`` of an open file, read with ``pread`` (seekable)."""

  def __init__(self, fd: int, start: int, size: int):
    super().__init__()
    self._fd, self._start, self._size, self._pos = fd, start, size, 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = 0) -> int:
    base = {0: 0, 1: self._pos, 2: self._size}[whence]
    self._pos = max(base + offset, 0)
    return self._pos

  def readinto(self, buf: Any) -> int:
    view = memoryview(buf).cast("B")
    n = max(min(len(view), self._size - self._pos), 0)
    data = os.pread(self._fd, n, self._start + self._pos) if n else b""
    view[:len(data)] = data
    self._pos += len(data)
    return len(data)


@contextlib.contextmanager
def member_file(zf: zipfile.ZipFile, f: BinaryIO, name: str, where: str) -> Iterator[BinaryIO]:
  """A seekable file of member `name` for h5py, not held in memory.

  A stored member (Keras stores its members) is read in place after its CRC is
  checked piecewise; a compressed one is expanded, bounded, into a temporary
  file.
  """
  info = zf.getinfo(name)
  if info.compress_type == zipfile.ZIP_STORED:
    start, _, _ = _local_header(f, info)
    window = _Window(f.fileno(), start, info.file_size)
    crc = 0
    while True:
      piece = window.read(MIB)
      if not piece:
        break
      crc = zipfile.crc32(piece, crc)
    if crc != info.CRC:
      raise FileFormatError(f"{where}: zip member {name!r} fails its CRC check; is it "
                            "truncated or damaged?")
    window.seek(0)
    yield window
    return
  with tempfile.TemporaryFile() as tmp:
    _copy_member(zf, name, tmp, info.file_size, where)
    tmp.seek(0)
    yield tmp


def pickle_globals(f: BinaryIO, limit: int = 4 * MIB) -> List[str]:
  """The ``module.name`` callables a pickle (a torch file's) imports, found without running it.

  Parses opcodes (`pickletools.genops`) of a raw pickle file, or of a torch
  zip's ``data.pkl``, reading at most `limit` bytes; for messages only (torch's
  restricted unpickler is what refuses the file).
  """
  import pickletools

  f.seek(0)
  data = f.read(limit)
  if data.startswith(b"PK\x03\x04"):
    try:
      zf = open_zip(f, "a torch file")
      member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
      data = read_member(zf, member, limit, "a torch file") if member else b""
    except (zipfile.BadZipFile, ValueError, OSError):
      return []
  found, strings, memo, last = [], [], {}, None
  stream = io.BytesIO(data)
  for _ in range(5):  # torch's legacy format is a few pickles in a row
    try:
      for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
          found.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
          found.append(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
          last = arg
          strings.append(arg)
        elif op.name == "MEMOIZE":
          memo[len(memo)] = last
        elif op.name.endswith("PUT"):
          memo[arg] = last
        elif op.name.endswith("GET"):
          last = memo.get(arg)
          if last is not None:
            strings.append(last)
        else:
          last = None
    except Exception:  # noqa: BLE001  (a damaged pickle: report what was found so far)
      break
    if stream.tell() >= len(data):
      break
  return list(dict.fromkeys(found))


