"""Safety primitives of the file readers: files, zip members, JSON and HDF5, all bounded.

Every byte a reader of `optax_nadam.interop._formats` takes from a file comes
through here. The rules (the threat model is in docs/reliability.md):

* Only regular files are opened (a FIFO, device or socket is refused by name,
  without blocking on it); a symlink loop is named as one.
* A zip member's declared size is checked before it is expanded (no member may
  inflate more than 100x past 64 MiB), reads stop at the declared size, and a
  stored member that claims more bytes than the archive has is refused.
* JSON is at most 64 MiB and 200 levels deep; configs are type-checked
  (`optax_nadam.interop._formats._config`).
* An HDF5 file is walked without following links: soft and external links,
  hard-link cycles, external raw storage, virtual datasets and filters that
  HDF5 would load as plugins are refused, naming the object.
* A dataset's declared shape and dtype are checked against a `Budget` (the
  import's `like`: only shapes its leaves have, at most 5 copies of them; or
  the file's own size) before a byte of it is read.
"""

import contextlib
import contextvars
import errno
import io
import math
import os
import stat
import struct
import tempfile
import zipfile
from typing import Any, BinaryIO, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from optax_nadam.interop._formats._types import FileFormatError, h5py_module

MIB = 1 << 20
MAX_JSON_BYTES = 64 * MIB
MAX_JSON_DEPTH = 200
BOMB_FLOOR_BYTES = 64 * MIB  # a member may inflate past this only at <= BOMB_RATIO
BOMB_RATIO = 100  # Keras stores members (ratio 1); deflate reaches ~1000 only on junk
MAX_MEMBERS = 10_000
MAX_H5_OBJECTS = 1_000_000
MAX_H5_DEPTH = 64
COPIES = 5  # weights, m, v, EMA averages, gradient accumulators
SCALAR_SLACK_BYTES = MIB  # step counts, u-products, learning rates
_BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                    6: "scaleoffset", 32000: "lzf"}
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


# ------------------------------------------------------------------------- files


def _os_error(path: str, e: OSError) -> Exception:
  if e.errno == errno.ELOOP:
    return FileFormatError(f"{path}: a symlink loop (too many levels of symbolic links).")
  if e.errno == errno.ENOENT:
    return FileNotFoundError(errno.ENOENT, f"{path}: no such file or directory", path)
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
    raise IsADirectoryError(errno.EISDIR, f"{path} is a directory; expected a file", path)
  kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
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
      raise IsADirectoryError(errno.EISDIR, f"{path} is a directory; expected a file",
                              path) from None
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


# ------------------------------------------------------------------------- zip


def _local_header(f: BinaryIO, info: zipfile.ZipInfo) -> Tuple[int, int, int]:
  """``(data offset, local compressed size, local size)`` of a member, from its local header."""
  f.seek(info.header_offset)
  head = f.read(30)
  if len(head) < 30 or head[:4] != b"PK\x03\x04":
    raise zipfile.BadZipFile("no local file header where the central directory points")
  _, _, flags, _, _, _, _, csize, size, n, m = struct.unpack("<4s5H3I2H", head)
  if flags & 0x08:  # sizes in a data descriptor after the data: take the central ones
    csize, size = info.compress_size, info.file_size
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


# ------------------------------------------------------------------------- JSON


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


# ------------------------------------------------------------------------- budget


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


# ------------------------------------------------------------------------- HDF5


def _link_error(where: str, name: str, link: Any) -> FileFormatError:
  h5py = h5py_module()
  if isinstance(link, h5py.ExternalLink):
    return FileFormatError(f"{where}: {name} is an HDF5 external link to {link.filename}:"
                           f"{link.path}; a checkpoint's objects are its own, refused.")
  if isinstance(link, h5py.SoftLink):
    return FileFormatError(f"{where}: {name} is an HDF5 soft link to {link.path}; Keras "
                           "writes no links (one could alias another variable), refused.")
  return FileFormatError(f"{where}: {name} is an HDF5 {type(link).__name__}; refused.")


def vet_dataset(ds: Any, where: str) -> None:
  """Refuses a dataset whose data is not stored in the file itself, in plain form."""
  h5py = h5py_module()
  dcpl = ds.id.get_create_plist()
  if dcpl.get_layout() == h5py.h5d.VIRTUAL:
    sources = sorted({f"{s.file_name}:{s.dset_name}" for s in ds.virtual_sources()})
    raise FileFormatError(f"{where}: dataset {ds.name} is a virtual dataset (its data is in "
                          f"{_few(sources)}); refused.")
  if dcpl.get_external_count():
    files = [dcpl.get_external(i)[0].decode("utf8", "replace")
             for i in range(min(dcpl.get_external_count(), 8))]
    raise FileFormatError(f"{where}: dataset {ds.name} keeps its data in other files {files} "
                          "(HDF5 external storage); a checkpoint holds its own data, refused.")
  for i in range(dcpl.get_nfilters()):
    code = dcpl.get_filter(i)[0]
    if code not in _BUILTIN_FILTERS:
      raise FileFormatError(f"{where}: dataset {ds.name} uses HDF5 filter {code}, which is not "
                            "built in (HDF5 would load it as a plugin); refused.")


def vet_h5(h5: Any, where: str) -> None:
  """Walks an HDF5 file without following links; refuses links, cycles and unsafe datasets."""
  h5py = h5py_module()
  seen = {h5py.h5o.get_info(h5.id).addr: "/"}
  stack, count = [(h5, "/", 0)], 0
  while stack:
    group, path, depth = stack.pop()
    if depth > MAX_H5_DEPTH:
      raise FileFormatError(f"{where}: {path} nests {depth} groups deep; at most {MAX_H5_DEPTH}.")
    for key in group:
      count += 1
      if count > MAX_H5_OBJECTS:
        raise FileFormatError(f"{where} holds over {MAX_H5_OBJECTS} objects.")
      name = f"{path.rstrip('/')}/{key}"
      link = group.get(key, getlink=True)
      if not isinstance(link, h5py.HardLink):
        raise _link_error(where, name, link)
      obj = group[key]
      addr = h5py.h5o.get_info(obj.id).addr
      if addr in seen:
        raise FileFormatError(f"{where}: {name} is {seen[addr]} again (a hard link); Keras "
                              "writes each object once, refused.")
      seen[addr] = name
      if isinstance(obj, h5py.Group):
        stack.append((obj, name, depth + 1))
      elif isinstance(obj, h5py.Dataset):
        vet_dataset(obj, where)


def read_dataset(ds: Any) -> np.ndarray:
  """A vetted dataset's values as a fresh numpy array, within the current `Budget`.

  Checks the dtype (numbers of at most 8 bytes), then the declared shape
  against the budget, then that the file stores as many bytes as the dataset
  declares (unless compressed), before reading.
  """
  budget, where = current()
  dt = ds.dtype
  name = f"{where}: dataset {ds.name}"
  if dt.kind not in "fiubV" or dt.itemsize > 8 or dt.fields is not None or dt.subdtype:
    raise FileFormatError(f"{name} has dtype {dt}; weights and slots are numbers.")
  vet_dataset(ds, where)
  shape = tuple(int(d) for d in (ds.shape or ()))
  budget.charge(shape, dt, name)
  nbytes = math.prod(shape) * dt.itemsize
  plist = ds.id.get_create_plist()
  stored = ds.id.get_storage_size()
  if plist.get_nfilters() == 0 and stored < nbytes:
    raise FileFormatError(f"{name} declares {nbytes} bytes but stores {stored} (unwritten or "
                          "cut off); refused.")
  try:
    return np.array(ds[()], copy=False) if shape == () else ds[()]
  except OSError as e:
    raise FileFormatError(f"{name} cannot be read ({e}); is the file damaged?") from None
