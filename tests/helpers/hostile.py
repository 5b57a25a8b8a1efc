"""A corpus of hostile checkpoint files, built on demand (nothing binary is checked in).

Each `Case` builds its file(s) in a directory with the libraries an attacker would
use (h5py, zlib, struct, pickle, torch.save) and names the public call that reads
them and what that call must raise. `tests/scripts/hostile_probe.py` runs the
cases in a fresh interpreter and measures each one's peak memory and time;
`tests/interop/test_hostile_files.py` asserts on its results.

The files are small on disk; what they declare is not: datasets of 2 GiB and
4 TiB that store nothing, zip members that inflate to 1 GiB from 4.5 MB,
external storage pointing at a secret file, ``/dev/zero`` or a FIFO.
"""

import json
import os
import pathlib
import pickle
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


class Case(NamedTuple):
  """One hostile file: how to build it, how to read it, what the reader must say."""

  name: str
  build: Callable[[pathlib.Path], str]  # writes into a directory, returns the path to read
  call: str  # "params" | "state" | "config" | "torch" (see hostile_probe.CALLS)
  error: Optional[str]  # the exception's class name; None: the read must succeed
  match: str  # a regex the message must match (re.search)
  no_tensorflow: bool = False  # the refusal must not import TensorFlow


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
  import io

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


# ---------------------------------------------------------------- the cases


def _external(target: Callable[[pathlib.Path], str], shape, size: int) -> Callable:
  def build(d: pathlib.Path) -> Callable:
    src = target(d)

    def kernel(group, name):
      group.create_dataset(name, shape=shape, dtype="f4", external=[(src, 0, size)])
    return kernel
  return build


def _fifo(d: pathlib.Path) -> str:
  p = d / "pipe"
  if not p.exists():
    os.mkfifo(p)
  return str(p)


def _secret_h5(d: pathlib.Path) -> str:
  p = d / "secret.h5"
  with _h5py().File(p, "w") as f:
    f["data"] = np.frombuffer(SECRET, np.float32).reshape(3, 4)
  return str(p)


def _h5_case(kernel_for: Callable[[pathlib.Path], Callable], keras: bool = False) -> Callable:
  def build(d: pathlib.Path) -> str:
    kernel = kernel_for(d)
    if keras:
      return keras_zip(d / "model.keras", weights=keras_h5_bytes(kernel))
    return legacy_h5(d / "model.h5", kernel)
  return build


def _soft_kernel(target: str) -> Callable:
  def kernel(group, name):
    group[name] = _h5py().SoftLink(target)
  return lambda d: kernel


def _external_link(d: pathlib.Path) -> Callable:
  src = _secret_h5(d)

  def kernel(group, name):
    group[name] = _h5py().ExternalLink(src, "/data")
  return kernel


def _virtual(d: pathlib.Path) -> Callable:
  h5py = _h5py()
  src = _secret_h5(d)

  def kernel(group, name):
    layout = h5py.VirtualLayout(shape=(3, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(src, "data", shape=(3, 4))
    group.create_virtual_dataset(name, layout)
  return kernel


def _huge(shape, chunks) -> Callable:
  def kernel(group, name):
    group.create_dataset(name, shape=shape, dtype="f4", chunks=chunks)
  return lambda d: kernel


def _cycle(f) -> None:
  f["layers"]["dense"]["loop"] = f["layers"]  # a hard link back up: the tree is a cycle


def _keras_cfg(cfg: object) -> Callable:
  return lambda d: keras_zip(d / "model.keras", config=json.dumps(cfg).encode())


def _deep(depth: int) -> bytes:
  return b"[" * depth + b"]" * depth


def _bomb_member(member: str) -> Callable:
  return lambda d: keras_zip(d / "model.keras", replace=bomb(member))


def _lying_small(d: pathlib.Path) -> str:
  """config.json inflates to 1 GiB; both headers say 2 KiB."""
  return keras_zip(d / "model.keras", replace=bomb("config.json"),
                   local_size={"config.json": 2048}, central_size={"config.json": 2048})


def _lying_local(d: pathlib.Path) -> str:
  """The local header says 1 GiB, the central directory 2 KiB: they disagree."""
  return keras_zip(d / "model.keras", replace=bomb("config.json"),
                   local_size={"config.json": BOMB_BYTES}, central_size={"config.json": 2048})


def _lying_stored(d: pathlib.Path) -> str:
  """A stored model.weights.h5 whose sizes (stored, expanded) disagree: 2 GiB vs 6 KB."""
  w = keras_h5_bytes()
  return keras_zip(d / "model.keras", weights=w, local_size={"model.weights.h5": 1 << 31},
                   central_size={"model.weights.h5": 1 << 31})


def _stored_past_end(d: pathlib.Path) -> str:
  """A stored model.weights.h5 whose every size field says 2 GiB: past the end of the file."""
  big = {"model.weights.h5": 1 << 31}
  return keras_zip(d / "model.keras", local_size=big, central_size=big, stored_size=big)


def _random(name: str, n: int) -> Callable:
  def build(d: pathlib.Path) -> str:
    p = d / name
    p.write_bytes(np.random.RandomState(0).bytes(n))
    return str(p)
  return build


def _truncated_keras(d: pathlib.Path) -> str:
  blob = pathlib.Path(keras_zip(d / "full.keras")).read_bytes()
  p = d / "cut.keras"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def _truncated_h5(d: pathlib.Path) -> str:
  blob = pathlib.Path(legacy_h5(d / "full.h5")).read_bytes()
  p = d / "cut.h5"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def _empty(name: str) -> Callable:
  def build(d: pathlib.Path) -> str:
    (d / name).write_bytes(b"")
    return str(d / name)
  return build


def _directory(d: pathlib.Path) -> str:
  p = d / "not_a_checkpoint"
  p.mkdir(exist_ok=True)
  (p / "notes.txt").write_text("hello")
  return str(p)


def _loop(name: str) -> Callable:
  def build(d: pathlib.Path) -> str:
    a, b = d / name, d / f"other_{name}"
    for x, y in ((a, b), (b, a)):
      if not os.path.lexists(x):
        os.symlink(y, x)
    return str(a)
  return build


def _ckpt_dir_fifo(d: pathlib.Path) -> str:
  p = d / "ckpt_dir"
  p.mkdir(exist_ok=True)
  if not (p / "checkpoint").exists():
    os.mkfifo(p / "checkpoint")
  return str(p)


def _ckpt_dir_escape(d: pathlib.Path) -> str:
  p = d / "ckpt_dir"
  p.mkdir(exist_ok=True)
  (p / "checkpoint").write_text('model_checkpoint_path: "../../../../etc/ckpt-1"\n')
  return str(p)


def _shard(target: Optional[str]) -> Callable:
  """A checkpoint whose index has a TF table footer and whose data shard is a FIFO or a link."""
  def build(d: pathlib.Path) -> str:
    (d / "ckpt-1.index").write_bytes(bytes(40) + bytes.fromhex("57fb808b247547db"))
    shard = d / "ckpt-1.data-00000-of-00001"
    if not os.path.lexists(shard):
      os.mkfifo(shard) if target is None else os.symlink(target, shard)
    return str(d / "ckpt-1")
  return build


def _index_random(d: pathlib.Path) -> str:
  (d / "ckpt-1.index").write_bytes(np.random.RandomState(1).bytes(300))
  return str(d / "ckpt-1")


class _Reduce:
  def __init__(self, cmd: str):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


def _raw_pickle(d: pathlib.Path) -> str:
  p = d / "evil.pt"
  p.write_bytes(pickle.dumps(_Reduce(f"touch {d / 'PWNED'}"), protocol=4))
  return str(p)


def _zip_pickle(d: pathlib.Path) -> str:
  import torch

  p = d / "evil_zip.pt"
  torch.save({"model": _Reduce(f"touch {d / 'PWNED'}")}, p)
  return str(p)


def _torch_ok(d: pathlib.Path) -> str:
  import torch

  p = d / "ok.pt"
  torch.save({"kernel": torch.tensor(KERNEL), "bias": torch.tensor(BIAS)}, p)
  return str(p)


def _truncated_torch(d: pathlib.Path) -> str:
  blob = pathlib.Path(_torch_ok(d)).read_bytes()
  p = d / "cut.pt"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def _path(p: str) -> Callable:
  return lambda d: p


FF = "FileFormatError"
CASES: List[Case] = [
    # controls: the same builders, nothing hostile, read fine
    Case("ok_legacy_h5", lambda d: legacy_h5(d / "ok.h5"), "params", None, ""),
    Case("ok_keras", lambda d: keras_zip(d / "ok.keras"), "params", None, ""),
    Case("ok_keras_config", lambda d: keras_zip(d / "ok.keras"), "config", None, ""),
    Case("ok_torch", _torch_ok, "torch", None, ""),
    # HDF5 external storage, links, virtual datasets
    Case("h5_external_secret", _h5_case(_external(lambda d: str(write_secret(d)), (3, 4), 48)),
         "params", FF, r"model\.h5: dataset /model_weights/dense/dense/kernel:0 keeps its data "
         r"in other files \['.*secret\.bin'\] \(HDF5 external storage\)"),
    Case("h5_external_devzero", _h5_case(_external(lambda d: "/dev/zero", (HUGE,), 4 * HUGE)),
         "params", FF, r"kernel:0 keeps its data in other files \['/dev/zero'\]"),
    Case("h5_external_fifo", _h5_case(_external(_fifo, (3, 4), 48)), "params", FF,
         r"kernel:0 keeps its data in other files \['.*pipe'\]"),
    Case("keras_external_secret",
         _h5_case(_external(lambda d: str(write_secret(d)), (3, 4), 48), keras=True),
         "params", FF, r"model\.keras: model\.weights\.h5: dataset /layers/dense/vars/0 keeps "
         r"its data in other files"),
    Case("h5_external_link", _h5_case(_external_link), "params", FF,
         r"model\.h5: /model_weights/dense/dense/kernel:0 is an HDF5 external link to "
         r".*secret\.h5:/data"),
    Case("h5_soft_link", _h5_case(_soft_kernel("/model_weights/dense/dense/bias:0")), "params",
         FF, r"kernel:0 is an HDF5 soft link to /model_weights/dense/dense/bias:0"),
    Case("h5_dangling_soft_link", _h5_case(_soft_kernel("/nowhere")), "params", FF,
         r"kernel:0 is an HDF5 soft link to /nowhere"),
    Case("h5_virtual", _h5_case(_virtual), "params", FF,
         r"dataset /model_weights/dense/dense/kernel:0 is a virtual dataset .*secret\.h5"),
    Case("keras_hard_link_cycle",
         lambda d: keras_zip(d / "model.keras", weights=keras_h5_bytes(extra=_cycle)),
         "params", FF, r"/layers/dense/loop is /layers again \(a hard link\)"),
    # declared sizes
    Case("h5_huge_chunked", _h5_case(_huge((HUGE,), (1 << 20,))), "params", FF,
         r"dataset /model_weights/dense/dense/kernel:0 declares shape \(536870912,\) float32 "
         r"\(536870912 elements\), more than any leaf of like holds \(the largest of its 2 "
         r"leaves has 12\); refused before reading it"),
    Case("h5_huge_contiguous", _h5_case(_huge((HUGE,), None)), "params", FF,
         r"kernel:0 declares shape \(536870912,\) float32 \(536870912 elements\), more than any "
         r"leaf of like holds"),
    Case("h5_enormous_chunked", _h5_case(_huge((ENORMOUS,), (1 << 20,))), "params", FF,
         r"kernel:0 declares shape \(1099511627776,\) float32 \(1099511627776 elements\), more "
         r"than any leaf"),
    Case("keras_huge_chunked", _h5_case(_huge((HUGE,), (1 << 20,)), keras=True), "params", FF,
         r"dataset /layers/dense/vars/0 declares shape \(536870912,\) float32 .*more than any "
         r"leaf of like holds"),
    Case("h5_huge_config_only", _h5_case(_huge((HUGE,), None)), "config", FF,
         r"kernel:0 declares 2147483648 bytes; .* passes the \d+ bytes this import may read "
         r"\(the file size\)"),
    Case("h5_unwritten_small", _h5_case(_huge((3, 4), (1, 4))), "params", FF,
         r"kernel:0 declares 48 bytes but stores 0 \(unwritten or cut off\)"),
    Case("h5_huge_state", _h5_case(_huge((HUGE,), (1 << 20,))), "state", FF,
         r"kernel:0 declares shape \(536870912,\) float32 \(536870912 elements\), more than any "
         r"leaf of like holds"),
    # zip bombs and lying headers
    Case("keras_bomb_config", _bomb_member("config.json"), "params", FF,
         r"zip member 'config\.json' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_weights", _bomb_member("model.weights.h5"), "params", FF,
         r"zip member 'model\.weights\.h5' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_metadata", _bomb_member("metadata.json"), "params", FF,
         r"zip member 'metadata\.json' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_config_only", _bomb_member("model.weights.h5"), "config", FF,
         r"decompression bomb"),
    Case("keras_lying_sizes", _lying_small, "params", FF,
         r"model\.keras: zip member 'config\.json' .*(more than the 2048|damaged)"),
    Case("keras_lying_local_header", _lying_local, "params", FF,
         r"model\.keras: zip member 'config\.json'.*local header"),
    Case("keras_lying_stored", _lying_stored, "params", FF,
         r"zip member 'model\.weights\.h5' is stored \(not compressed\) but declares "
         r"2147483648 bytes and holds \d+"),
    Case("keras_stored_past_end", _stored_past_end, "params", FF,
         r"zip member 'model\.weights\.h5' declares 2147483648 stored bytes .*past the end of "
         r"the file"),
    # JSON
    Case("keras_deep_json", lambda d: keras_zip(d / "model.keras", config=_deep(100_000)),
         "params", FF, r"model\.keras: config\.json nests deeper than 200 levels"),
    Case("keras_deep_json_config", lambda d: keras_zip(d / "model.keras", config=_deep(100_000)),
         "config", FF, r"config\.json nests deeper than 200"),
    Case("keras_json_list", _keras_cfg([1, 2, 3]), "params", FF,
         r"model\.keras: config\.json is a list; expected an object"),
    Case("keras_json_layers_wrong", _keras_cfg({"config": {"layers": [1, "x"]}}), "params", FF,
         r"config\.json: config\.layers\[0\] is an int; expected an object"),
    Case("keras_json_optimizer_wrong",
         _keras_cfg(keras_config({"class_name": "Nadam", "config": {
             "learning_rate": 0.01, "gradient_accumulation_steps": "many"}})),
         "state", FF, r"compile_config\.optimizer\.config\.gradient_accumulation_steps is a str; "
         r"expected an int"),
    Case("keras_optimizer_os_system",
         _keras_cfg(keras_config({"module": "os", "class_name": "system", "config": {}})),
         "config", FF, r"optimizer class is os\.system, not one of Keras's optimizers"),
    Case("keras_invalid_json", lambda d: keras_zip(d / "model.keras", config=b"{'x': nan"),
         "params", FF, r"config\.json is not valid JSON"),
    Case("h5_training_config_list", lambda d: legacy_h5(d / "model.h5", training_config="[1]"),
         "params", FF, r"model\.h5: training_config is a list; expected an object"),
    Case("h5_training_config_deep",
         lambda d: legacy_h5(d / "model.h5", training_config=_deep(100_000).decode()),
         "params", FF, r"training_config nests deeper than 200 levels"),
    # random, empty, truncated, not files
    Case("random_keras", _random("random.keras", 4096), "params", FF, r"is not a Keras 3"),
    Case("random_h5_magic", lambda d: _random_h5(d), "params", FF, r"truncated or damaged"),
    Case("empty_file", _empty("empty.keras"), "params", FF, r"is not a Keras 3"),
    Case("truncated_keras", _truncated_keras, "params", FF, r"cut\.keras.*(damaged|past the end)"),
    Case("truncated_h5", _truncated_h5, "params", FF, r"cut\.h5.*truncated or damaged"),
    Case("directory", _directory, "params", "IsADirectoryError",
         r"^\S*not_a_checkpoint is a directory but not a TF checkpoint", no_tensorflow=True),
    Case("symlink_loop", _loop("loop.keras"), "params", FF, r"loop\.keras: a symlink loop",
         no_tensorflow=True),
    Case("fifo", lambda d: _fifo(d), "params", FF, r"pipe is a FIFO \(named pipe\), not a "
         r"regular file", no_tensorflow=True),
    Case("dev_zero", _path("/dev/zero"), "params", FF,
         r"/dev/zero is a character device, not a regular file"),
    Case("ckpt_dir_fifo", _ckpt_dir_fifo, "params", FF,
         r"ckpt_dir/checkpoint is a FIFO \(named pipe\)", no_tensorflow=True),
    Case("ckpt_dir_escapes", _ckpt_dir_escape, "params", FF,
         r"ckpt_dir/checkpoint points outside its directory", no_tensorflow=True),
    Case("ckpt_shard_fifo", _shard(None), "params", FF,
         r"ckpt-1\.data-00000-of-00001 is a FIFO \(named pipe\)", no_tensorflow=True),
    Case("ckpt_shard_devzero", _shard("/dev/zero"), "params", FF,
         r"ckpt-1\.data-00000-of-00001 is a character device", no_tensorflow=True),
    Case("ckpt_index_random", _index_random, "params", FF,
         r"ckpt-1\.index is not a TF checkpoint index", no_tensorflow=True),
    # torch readers
    Case("torch_random", _random("random.pt", 4096), "torch", "ValueError",
         r"random\.pt' is not a readable torch\.save file"),
    Case("torch_empty", _empty("empty.pt"), "torch", "ValueError",
         r"empty\.pt' is not a readable torch\.save file"),
    Case("torch_truncated", _truncated_torch, "torch", "ValueError",
         r"cut\.pt' is not a readable torch\.save file"),
    Case("torch_directory", _directory, "torch", "IsADirectoryError",
         r"^\S*not_a_checkpoint is a directory; expected a file\.$"),
    Case("torch_fifo", lambda d: _fifo(d), "torch", FF, r"pipe is a FIFO"),
    Case("torch_symlink_loop", _loop("loop.pt"), "torch", FF, r"loop\.pt: a symlink loop"),
    Case("torch_dev_zero", _path("/dev/zero"), "torch", FF, r"is a character device"),
    Case("torch_raw_pickle", _raw_pickle, "torch", "ValueError",
         r"evil\.pt' holds Python objects .*calls posix\.system"),
    Case("torch_zip_pickle", _zip_pickle, "torch", "ValueError",
         r"evil_zip\.pt' holds Python objects .*posix\.system"),
]


def _random_h5(d: pathlib.Path) -> str:
  p = d / "random.h5"
  p.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.RandomState(2).bytes(4096))
  return str(p)


def by_name() -> Dict[str, Case]:
  return {c.name: c for c in CASES}


def build(case: Case, root: pathlib.Path) -> str:
  """Builds `case` in its own directory under `root` and returns the path to read."""
  d = root / case.name
  d.mkdir(parents=True, exist_ok=True)
  path = case.build(d)
  (d / "PATH").write_text(path)
  return path
