"""Safety primitives of the file readers: files, zip members, JSON and HDF5, all bounded.

Every byte a reader of `optax_nadam.interop` (torch and Keras) takes from a file
comes through here, and every refusal is a `FileFormatError`. The rules (the
threat model is in docs/reliability.md):

* Only regular files are opened (a FIFO, device or socket is refused by name,
  without blocking on it); a symlink loop is named as one.
* A zip member's declared size is checked before it is expanded (no member may
  inflate more than 100x past 64 MiB), reads stop at the declared size, and a
  stored member that claims more bytes than the archive has is refused.
* JSON is at most 64 MiB and 200 levels deep; configs are type-checked
  (`optax_nadam.interop.keras._config`).
* An HDF5 file is walked without following links: soft and external links,
  hard-link cycles, external raw storage, virtual datasets and filters that
  HDF5 would load as plugins are refused, naming the object.
* A dataset's declared shape and dtype are checked against a `Budget` (the
  import's `like`: only shapes its leaves have, at most 5 copies of them; or
  the file's own size) before a byte of it is read.
"""

from optax_nadam.interop._files.budget import Budget, current, reading
from optax_nadam.interop._files.errors import FileFormatError, damaged, text
from optax_nadam.interop._files.hdf5 import array, h5py_module, read_dataset, vet_dataset, vet_h5
from optax_nadam.interop._files.jsonfile import json_depth, load_json
from optax_nadam.interop._files.limits import (
    BOMB_FLOOR_BYTES,
    BOMB_RATIO,
    COPIES,
    MAX_H5_DEPTH,
    MAX_H5_OBJECTS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_MEMBERS,
    MIB,
    SCALAR_SLACK_BYTES,
)
from optax_nadam.interop._files.opener import (
    check_regular,
    open_regular,
    read_small,
    regular_file,
    stat_path,
)
from optax_nadam.interop._files.zips import (
    member_file,
    open_zip,
    pickle_globals,
    read_member,
)

__all__ = [
    "BOMB_FLOOR_BYTES", "BOMB_RATIO", "COPIES", "MAX_H5_DEPTH", "MAX_H5_OBJECTS",
    "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_MEMBERS", "MIB", "SCALAR_SLACK_BYTES", "Budget",
    "FileFormatError", "array", "damaged", "h5py_module", "regular_file", "text",
    "check_regular", "current", "json_depth", "load_json", "member_file", "open_regular",
    "open_zip", "pickle_globals", "read_dataset", "read_member", "read_small", "reading",
    "stat_path", "vet_dataset", "vet_h5"]
