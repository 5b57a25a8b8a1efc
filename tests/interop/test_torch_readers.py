"""The torch-side readers written here: safetensors (our bounded reader) and DCP metadata.

Files are built by the test (valid ones by the format's specification, then
damaged or hostile variants); every refusal is a `FileFormatError` (a
ValueError) naming the file and the part at fault, raised before any tensor
data is read where the header already tells.
"""

import json
import os
import struct

import numpy as np
import pytest
import torch

from optax_nadam import interop
from optax_nadam.interop._files import FileFormatError
from optax_nadam.interop.torch._safetensors import SafetensorsFile
from tests.helpers.torch_runs import write_safetensors


def _raw(path, header, data=b""):
  raw = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
  return path


def test_a_safetensors_file_reads_back_exactly(tmp_path):
  tensors = {"b.weight": torch.randn(3, 2), "a.bias": torch.randn(5)}
  write_safetensors(tmp_path / "m.safetensors", tensors)
  f = SafetensorsFile(tmp_path / "m.safetensors")
  assert list(f.entries) == ["a.bias", "b.weight"]  # the file's (sorted) order
  for name, t in tensors.items():
    np.testing.assert_array_equal(f.read(name), t.numpy())
  like = {"a": {"bias": np.zeros(5, np.float32)}, "b": {"weight": np.zeros((3, 2), np.float32)}}
  params = interop.params_from_torch(tmp_path / "m.safetensors", like)
  np.testing.assert_array_equal(params["b"]["weight"], tensors["b.weight"].numpy())


def test_bfloat16_is_read_as_float32(tmp_path):
  x = np.array([1.5, -2.25, 3e-3], np.float32)
  bf16 = (x.view(np.uint32) >> 16).astype("<u2")
  path = _raw(tmp_path / "h.safetensors", {"w": {"dtype": "BF16", "shape": [3],
                                                 "data_offsets": [0, 6]}}, bf16.tobytes())
  np.testing.assert_allclose(SafetensorsFile(path).read("w"), x, rtol=1e-2)


BAD = {
    "header longer than the file": (
        lambda p: p.write_bytes(struct.pack("<Q", 10**6) + b"{}"),
        r"declares a 1000000-byte header but holds 10 bytes"),
    "header not JSON": (lambda p: p.write_bytes(struct.pack("<Q", 3) + b"{x}"),
                        r"its header is not JSON"),
    "header a list": (lambda p: _raw(p, [1, 2]), r"its header is not a JSON object"),
    "offsets past the end": (
        lambda p: _raw(p, {"w": {"dtype": "F32", "shape": [1000, 1000],
                                 "data_offsets": [0, 4 * 10**6]}}, b"\0" * 16),
        r"tensor 'w': data_offsets \[0, 4000000\] do not hold 4000000 bytes .*inside the file"),
    "offsets that disagree with the shape": (
        lambda p: _raw(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
                       b"\0" * 16), r"tensor 'w': data_offsets \[0, 8\] do not hold 16 bytes"),
    "overlapping tensors": (
        lambda p: _raw(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                       b"\0" * 16), r"tensors 'a' and 'b' overlap"),
    "unknown dtype": (lambda p: _raw(p, {"w": {"dtype": "C64", "shape": [1],
                                               "data_offsets": [0, 8]}}, b"\0" * 8),
                      r"tensor 'w': dtype 'C64' is not one this reader knows"),
    "wrong types": (lambda p: _raw(p, {"w": {"dtype": "F32", "shape": "big",
                                             "data_offsets": [0, 4]}}, b"\0" * 4),
                    r"tensor 'w': shape big / data_offsets \[0, 4\] are not lists"),
    "empty file": (lambda p: p.write_bytes(b""), r"has 0 bytes: no header"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_damaged_safetensors_files_are_refused_by_name(tmp_path, case):
  make, message = BAD[case]
  path = tmp_path / "bad.safetensors"
  make(path)
  with pytest.raises(FileFormatError, match=r"safetensors file '.*bad\.safetensors'.*" + message):
    interop.params_from_torch(path, {"w": np.zeros(4, np.float32)})


def test_a_shape_that_does_not_fit_like_is_refused_before_reading(tmp_path, monkeypatch):
  write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(64, 64)})
  monkeypatch.setattr(SafetensorsFile, "read", lambda *a: pytest.fail("data was read"))
  with pytest.raises(ValueError, match=r"m\.safetensors'.*w \(params leaf \['w'\]\) has shape "
                     r"\(64, 64\) .*does not fit the leaf's \(3,\)"):
    interop.params_from_torch(tmp_path / "m.safetensors", {"w": np.zeros(3, np.float32)})


@pytest.mark.parametrize("name", ["m.safetensors", "ckpt.pt"])
def test_a_fifo_is_refused_without_blocking(tmp_path, name):
  os.mkfifo(tmp_path / name)
  with pytest.raises(FileFormatError, match=r"is a FIFO \(named pipe\), not a regular file"):
    interop.params_from_torch(tmp_path / name, {"w": np.zeros(3, np.float32)})


def test_a_dcp_item_outside_its_file_is_refused(tmp_path):
  import torch.distributed.checkpoint as dcp

  dcp.save({"model": {"w": torch.ones(3)}}, checkpoint_id=str(tmp_path / "d"))
  data = next(p for p in (tmp_path / "d").iterdir() if p.suffix == ".distcp")
  data.write_bytes(data.read_bytes()[:10])  # truncated
  with pytest.raises(FileFormatError, match=r"item 'model\.w' lies at bytes 0\+\d+ of "
                     r"'__0_0\.distcp', which has 10; truncated or damaged"):
    interop.params_from_torch(tmp_path / "d", {"w": np.zeros(3, np.float32)})


def test_a_folder_that_is_no_checkpoint_is_named(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(FileFormatError, match=r"is not a checkpoint this reader knows: no "
                     r"\.metadata .*model\.safetensors.*optimizer\.pt"):
    interop.params_from_torch(tmp_path, {"w": np.zeros(3, np.float32)})


def test_an_index_naming_a_file_outside_its_folder_is_refused(tmp_path):
  (tmp_path / "secret.safetensors").write_bytes(b"")
  folder = tmp_path / "ck"
  folder.mkdir()
  (folder / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"w": "../secret.safetensors"}}))
  with pytest.raises(FileFormatError, match=r"index file '.*model\.safetensors\.index\.json' has "
                     "no weight_map of names to shard files in its folder"):
    interop.params_from_torch(folder, {"w": np.zeros(3, np.float32)})
