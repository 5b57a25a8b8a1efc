"""Makers of the hostile cases: each writes its files into a directory, returns the path to read."""

import json
import os
import pathlib
import pickle
from typing import Callable, Optional

import numpy as np

from tests.helpers.hostile_files import (
  BIAS,
  BOMB_BYTES,
  KERNEL,
  SECRET,
  bomb,
  keras_h5_bytes,
  keras_zip,
  legacy_h5,
  stored,
  write_secret,
  zip_bytes,
)


def _h5py():
  import h5py

  return h5py


def external(target: Callable[[pathlib.Path], str], shape, size: int) -> Callable:
  def build(d: pathlib.Path) -> Callable:
    src = target(d)

    def kernel(group, name):
      group.create_dataset(name, shape=shape, dtype="f4", external=[(src, 0, size)])
    return kernel
  return build


def secret(d: pathlib.Path) -> str:
  return str(write_secret(d))


def fifo(d: pathlib.Path) -> str:
  p = d / "pipe"
  if not p.exists():
    os.mkfifo(p)
  return str(p)


def secret_h5(d: pathlib.Path) -> str:
  p = d / "secret.h5"
  with _h5py().File(p, "w") as f:
    f["data"] = np.frombuffer(SECRET, np.float32).reshape(3, 4)
  return str(p)


def h5_case(kernel_for: Callable[[pathlib.Path], Callable], keras: bool = False) -> Callable:
  def build(d: pathlib.Path) -> str:
    kernel = kernel_for(d)
    if keras:
      return keras_zip(d / "model.keras", weights=keras_h5_bytes(kernel))
    return legacy_h5(d / "model.h5", kernel)
  return build


def soft_kernel(target: str) -> Callable:
  def kernel(group, name):
    group[name] = _h5py().SoftLink(target)
  return lambda d: kernel


def external_link(d: pathlib.Path) -> Callable:
  src = secret_h5(d)

  def kernel(group, name):
    group[name] = _h5py().ExternalLink(src, "/data")
  return kernel


def virtual(d: pathlib.Path) -> Callable:
  h5py = _h5py()
  src = secret_h5(d)

  def kernel(group, name):
    layout = h5py.VirtualLayout(shape=(3, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(src, "data", shape=(3, 4))
    group.create_virtual_dataset(name, layout)
  return kernel


def huge(shape, chunks) -> Callable:
  def kernel(group, name):
    group.create_dataset(name, shape=shape, dtype="f4", chunks=chunks)
  return lambda d: kernel


def cycle(f) -> None:
  f["layers"]["dense"]["loop"] = f["layers"]  # a hard link back up: the tree is a cycle


def keras_cfg(cfg: object) -> Callable:
  return lambda d: keras_zip(d / "model.keras", config=json.dumps(cfg).encode())


def deep(depth: int) -> bytes:
  return b"[" * depth + b"]" * depth


def bomb_member(member: str) -> Callable:
  return lambda d: keras_zip(d / "model.keras", replace=bomb(member))


def lying_small(d: pathlib.Path) -> str:
  """config.json inflates to 1 GiB; both headers say 2 KiB."""
  return keras_zip(d / "model.keras", replace=bomb("config.json"),
                   local_size={"config.json": 2048}, central_size={"config.json": 2048})


def lying_local(d: pathlib.Path) -> str:
  """The local header says 1 GiB, the central directory 2 KiB: they disagree."""
  return keras_zip(d / "model.keras", replace=bomb("config.json"),
                   local_size={"config.json": BOMB_BYTES}, central_size={"config.json": 2048})


def lying_stored(d: pathlib.Path) -> str:
  """A stored model.weights.h5 whose sizes (stored, expanded) disagree: 2 GiB vs 6 KB."""
  w = keras_h5_bytes()
  return keras_zip(d / "model.keras", weights=w, local_size={"model.weights.h5": 1 << 31},
                   central_size={"model.weights.h5": 1 << 31})


def stored_past_end(d: pathlib.Path) -> str:
  """A stored model.weights.h5 whose every size field says 2 GiB: past the end of the file."""
  big = {"model.weights.h5": 1 << 31}
  return keras_zip(d / "model.keras", local_size=big, central_size=big, stored_size=big)


def random(name: str, n: int) -> Callable:
  def build(d: pathlib.Path) -> str:
    p = d / name
    p.write_bytes(np.random.RandomState(0).bytes(n))
    return str(p)
  return build


def truncated_keras(d: pathlib.Path) -> str:
  blob = pathlib.Path(keras_zip(d / "full.keras")).read_bytes()
  p = d / "cut.keras"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def truncated_h5(d: pathlib.Path) -> str:
  blob = pathlib.Path(legacy_h5(d / "full.h5")).read_bytes()
  p = d / "cut.h5"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def empty(name: str) -> Callable:
  def build(d: pathlib.Path) -> str:
    (d / name).write_bytes(b"")
    return str(d / name)
  return build


def directory(d: pathlib.Path) -> str:
  p = d / "not_a_checkpoint"
  p.mkdir(exist_ok=True)
  (p / "notes.txt").write_text("hello")
  return str(p)


def loop(name: str) -> Callable:
  def build(d: pathlib.Path) -> str:
    a, b = d / name, d / f"other_{name}"
    for x, y in ((a, b), (b, a)):
      if not os.path.lexists(x):
        os.symlink(y, x)
    return str(a)
  return build


def ckpt_dir_fifo(d: pathlib.Path) -> str:
  p = d / "ckpt_dir"
  p.mkdir(exist_ok=True)
  if not (p / "checkpoint").exists():
    os.mkfifo(p / "checkpoint")
  return str(p)


def ckpt_dir_escape(d: pathlib.Path) -> str:
  p = d / "ckpt_dir"
  p.mkdir(exist_ok=True)
  (p / "checkpoint").write_text('model_checkpoint_path: "../../../../etc/ckpt-1"\n')
  return str(p)


def shard(target: Optional[str]) -> Callable:
  """A checkpoint whose index has a TF table footer and whose data shard is a FIFO or a link."""
  def build(d: pathlib.Path) -> str:
    (d / "ckpt-1.index").write_bytes(bytes(40) + bytes.fromhex("57fb808b247547db"))
    shard = d / "ckpt-1.data-00000-of-00001"
    if not os.path.lexists(shard):
      os.mkfifo(shard) if target is None else os.symlink(target, shard)
    return str(d / "ckpt-1")
  return build


def index_random(d: pathlib.Path) -> str:
  (d / "ckpt-1.index").write_bytes(np.random.RandomState(1).bytes(300))
  return str(d / "ckpt-1")


class Reduce:
  def __init__(self, cmd: str):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


def raw_pickle(d: pathlib.Path) -> str:
  p = d / "evil.pt"
  p.write_bytes(pickle.dumps(Reduce(f"touch {d / 'PWNED'}"), protocol=4))
  return str(p)


def zip_pickle(d: pathlib.Path) -> str:
  import torch

  p = d / "evil_zip.pt"
  torch.save({"model": Reduce(f"touch {d / 'PWNED'}")}, p)
  return str(p)


def torch_ok(d: pathlib.Path) -> str:
  import torch

  p = d / "ok.pt"
  torch.save({"kernel": torch.tensor(KERNEL), "bias": torch.tensor(BIAS)}, p)
  return str(p)


def _torch_members(d: pathlib.Path):
  import zipfile

  with zipfile.ZipFile(torch_ok(d)) as z:
    return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def torch_bomb(d: pathlib.Path) -> str:
  """A torch.save zip whose tensor data member inflates to 1 GiB (torch expands it whole)."""
  members = [bomb(n) if n.endswith("data/0") else stored(n, b) for n, b in _torch_members(d)]
  (d / "bomb.pt").write_bytes(zip_bytes(members))
  return str(d / "bomb.pt")


def torch_huge_storage(d: pathlib.Path) -> str:
  """data.pkl declares a storage of 2**29 elements; the data member holds 48 bytes."""
  members = []
  for n, b in _torch_members(d):
    if n.endswith("data.pkl"):
      b = b.replace(b"K\x0c", b"J" + (1 << 29).to_bytes(4, "little"), 1)
    members.append(stored(n, b))
  (d / "huge.pt").write_bytes(zip_bytes(members))
  return str(d / "huge.pt")


def truncated_torch(d: pathlib.Path) -> str:
  blob = pathlib.Path(torch_ok(d)).read_bytes()
  p = d / "cut.pt"
  p.write_bytes(blob[:len(blob) // 2])
  return str(p)


def path(p: str) -> Callable:
  return lambda d: p


def random_h5(d: pathlib.Path) -> str:
  p = d / "random.h5"
  p.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.RandomState(2).bytes(4096))
  return str(p)


