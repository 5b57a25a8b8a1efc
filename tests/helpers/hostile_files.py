"""Builders of checkpoint files, byte by byte when they must lie: HDF5 and zip.

The pieces `tests/helpers/hostile.py` assembles into hostile files: a
tf-keras-layout ``.h5`` and a Keras 3 ``.keras`` (one Dense), written with h5py
and a zip writer whose size fields can lie.
"""

import io
import json
import pathlib
import struct
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

SECRET = b"TOPSECRET-not-a-weight!!" * 2  # 48 bytes: a (3, 4) float32 kernel's worth
LIKE_SHAPES = [(3, 4), (4,)]  # the kernel and bias of one Dense(4) on 3 inputs
KERNEL = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
BIAS = np.array([0.5, -0.5, 0.25, 0.0], np.float32)
BOMB_BYTES = 1 << 30  # what a zip bomb member inflates to
HUGE = 1 << 29  # float32 elements of a "2 GiB" dataset
ENORMOUS = 1 << 40  # elements of a "4 TiB" dataset


# ---------------------------------------------------------------- HDF5 builders


def _h5py():
  import h5py

  return h5py


def write_secret(d: pathlib.Path) -> pathlib.Path:
  p = d / "secret.bin"
  p.write_bytes(SECRET)
  return p


def legacy_h5(path: pathlib.Path, kernel: Optional[Callable] = None,
              training_config: Optional[str] = None) -> str:
  """A tf-keras-layout ``.h5`` (one Dense); `kernel(group, name)` writes the kernel instead."""
  h5py = _h5py()
  with h5py.File(path, "w") as f:
    g = f.create_group("model_weights")
    g.attrs["layer_names"] = [b"dense"]
    layer = g.create_group("dense")
    layer.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    inner = layer.create_group("dense")
    if kernel is None:
      inner["kernel:0"] = KERNEL
    else:
      kernel(inner, "kernel:0")
    inner["bias:0"] = BIAS
    if training_config is not None:
      f.attrs["training_config"] = training_config
  return str(path)


def keras_h5_bytes(kernel: Optional[Callable] = None, extra: Optional[Callable] = None) -> bytes:
  """A Keras 3 ``model.weights.h5`` (``layers/dense/vars/{0,1}``), as bytes."""
  h5py = _h5py()
  buf = io.BytesIO()
  with h5py.File(buf, "w") as f:
    v = f.create_group("layers").create_group("dense").create_group("vars")
    if kernel is None:
      v["0"] = KERNEL
    else:
      kernel(v, "0")
    v["1"] = BIAS
    f.create_group("optimizer").create_group("vars")
    if extra is not None:
      extra(f)
  return buf.getvalue()


def keras_config(optimizer: Optional[dict] = None) -> dict:
  opt = optimizer if optimizer is not None else {
      "module": "keras.optimizers", "class_name": "Nadam", "registered_name": None,
      "config": {"name": "nadam", "learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999,
                 "epsilon": 1e-7}}
  return {"module": "keras", "class_name": "Sequential", "registered_name": None,
          "config": {"name": "sequential", "trainable": True, "layers": [
              {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
               "config": {"name": "dense", "trainable": True, "units": 4}}]},
          "compile_config": {"optimizer": opt, "loss": "mse"}}


# ---------------------------------------------------------------- zip builder

class Member(NamedTuple):
  name: str
  data: bytes  # what is stored (compressed for method 8)
  method: int  # 0 stored, 8 deflated
  crc: int
  size: int  # the true uncompressed size


def stored(name: str, raw: bytes) -> Member:
  return Member(name, raw, 0, zlib.crc32(raw), len(raw))


def deflated(name: str, raw: bytes) -> Member:
  c = zlib.compressobj(6, zlib.DEFLATED, -15)
  return Member(name, c.compress(raw) + c.flush(), 8, zlib.crc32(raw), len(raw))


_BOMB: Dict[int, Member] = {}


def bomb(name: str, size: int = BOMB_BYTES) -> Member:
  """A deflated member of `size` zero bytes (1 GiB -> ~4.5 MB), computed once."""
  if size not in _BOMB:
    c, chunk, crc, out = zlib.compressobj(1, zlib.DEFLATED, -15), bytes(1 << 24), 0, []
    for _ in range(size // len(chunk)):
      out.append(c.compress(chunk))
      crc = zlib.crc32(chunk, crc)
    out.append(c.flush())
    _BOMB[size] = Member("", b"".join(out), 8, crc, size)
  return _BOMB[size]._replace(name=name)


def zip_bytes(members: List[Member], local_size: Optional[Dict[str, int]] = None,
              central_size: Optional[Dict[str, int]] = None,
              stored_size: Optional[Dict[str, int]] = None) -> bytes:
  """A zip archive written byte by byte; the size fields may lie (per member name).

  `local_size` / `central_size` replace the uncompressed size in the local
  header / central directory; `stored_size` the compressed size in both.
  """
  out, central = bytearray(), bytearray()
  for m in members:
    name, off = m.name.encode(), len(out)
    lsize = (local_size or {}).get(m.name, m.size)
    csize = (central_size or {}).get(m.name, m.size)
    stored_n = (stored_size or {}).get(m.name, len(m.data))
    out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, m.method, 0, 0x21, m.crc,
                       stored_n, lsize, len(name), 0) + name + m.data
    central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, m.method, 0, 0x21, m.crc,
                           stored_n, csize, len(name), 0, 0, 0, 0, 0, off) + name
  n = len(members)
  return bytes(out + central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, n, n,
                                           len(central), len(out), 0))


def keras_zip(path: pathlib.Path, config: Optional[bytes] = None,
              weights: Optional[bytes] = None, metadata: Optional[bytes] = None,
              replace: Optional[Member] = None, **lies) -> str:
  """A ``.keras`` archive as Keras writes it (members stored); `replace` swaps one member."""
  members = [
      stored("metadata.json", metadata if metadata is not None else
             b'{"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}'),
      stored("config.json", config if config is not None else
             json.dumps(keras_config()).encode()),
      stored("model.weights.h5", weights if weights is not None else keras_h5_bytes())]
  if replace is not None:
    members = [replace if m.name == replace.name else m for m in members]
  path.write_bytes(zip_bytes(members, **lies))
  return str(path)

