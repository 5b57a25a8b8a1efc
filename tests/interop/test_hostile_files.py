"""Hostile checkpoint files: every one refused by name, bounded in memory and time.

The corpus (`tests/helpers/hostile.py`) is built here, by the libraries an
attacker would use; nothing binary is checked in. Each case is read through the
public API in this process (error class, message, no secret bytes returned, no
pickle command run) and, marked slow, all of them again in a fresh interpreter
(`tests/scripts/hostile_probe.py`) that measures each read's peak memory above
the imports' baseline (must stay under 1 GiB) and its time (seconds), and that
a refusal which needs no TensorFlow does not import it.
"""

import io
import json
import os
import pathlib
import re
import signal
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_nadam.interop import _files
from optax_nadam.interop._files import FileFormatError
from tests.helpers import hostile
from tests.helpers import subproc as _subproc

NAMES = [c.name for c in hostile.CASES]
PEAK_MIB = 1024
SECONDS = 10  # generous on 2 loaded cores; the reads take milliseconds (see the probe's output)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("hostile")
  for case in hostile.CASES:
    hostile.build(case, root)
  return root


def _check(case, error, message, secret, pwned):
  assert not pwned, f"{case.name}: the pickle's command ran"
  assert not secret, f"{case.name}: a returned array holds the secret file's bytes"
  assert error == case.error, f"{case.name}: raised {error}: {message}"
  if case.error is not None:
    assert re.search(case.match, message), f"{case.name}: {message!r} !~ {case.match!r}"
    if case.error == "FileFormatError":
      assert issubclass(FileFormatError, ValueError)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_file_is_refused_by_name(corpus, name):
  sys.path.insert(0, str(_subproc.SCRIPTS))
  try:
    import hostile_probe  # the same calls the subprocess makes
  finally:
    sys.path.remove(str(_subproc.SCRIPTS))
  case = hostile.by_name()[name]
  path = (corpus / name / "PATH").read_text()
  old = signal.signal(signal.SIGALRM, hostile_probe._on_alarm)
  try:
    r = hostile_probe.run_case(case, path)
  finally:
    signal.signal(signal.SIGALRM, old)
  _check(case, r["error"], r["message"], r["secret"], r["pwned"])


@pytest.mark.slow
def test_hostile_files_peak_memory_and_time_in_a_fresh_process(corpus):
  results = _subproc.run_script("hostile_probe", [str(corpus), *NAMES], devices=1, timeout=300)
  cases = hostile.by_name()
  assert [r["name"] for r in results] == NAMES
  for r in results:
    case = cases[r["name"]]
    print(f"\n{r['name']}: {r['error']} peak +{r['peak_mib']} MiB, {r['seconds']} s")
    _check(case, r["error"], r["message"], r["secret"], r["pwned"])
    assert r["peak_mib"] < PEAK_MIB, r
    assert r["seconds"] < SECONDS, r
    if case.no_tensorflow:
      assert not r["tensorflow"], f"{case.name} imported TensorFlow to refuse the file"


def test_controls_read_the_values_written(corpus):
  import jax.numpy as jnp

  from optax_nadam import interop

  like = [jnp.zeros(s, jnp.float32) for s in hostile.LIKE_SHAPES]
  for name in ("ok_legacy_h5", "ok_keras"):
    got = interop.params_from_keras((corpus / name / "PATH").read_text(), like)
    np.testing.assert_array_equal(np.asarray(got[0]), hostile.KERNEL)
    np.testing.assert_array_equal(np.asarray(got[1]), hostile.BIAS)


# ---------------------------------------------------------------- the primitives


def _depth(x) -> int:
  if isinstance(x, dict):
    return 1 + max(map(_depth, x.values()), default=0)
  if isinstance(x, list):
    return 1 + max(map(_depth, x), default=0)
  return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text("[]{}\"\\ab,:", max_size=6),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.text("[]{}\"\\k", max_size=4), kids, max_size=3), max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_json_depth_counts_brackets_outside_strings(value):
  text = json.dumps(value).encode()
  assert _files.json_depth(text) == _depth(value)
  assert _files.load_json(text, "x") == value


def test_json_depth_limit_is_exact():
  ok, deep = b"[" * 200 + b"]" * 200, b"[" * 201 + b"]" * 201
  assert _depth(_files.load_json(ok, "ok")) == 200
  with pytest.raises(FileFormatError, match="deep: nests deeper than 200 levels"):
    _files.load_json(deep, "deep:")


def test_load_json_refuses_size_and_bad_text():
  with pytest.raises(FileFormatError, match=r"big is \d+ bytes of JSON; at most"):
    _files.load_json(b" " * (_files.MAX_JSON_BYTES + 1), "big")
  with pytest.raises(FileFormatError, match=r"bad is not valid JSON \(UnicodeDecodeError"):
    _files.load_json(b'"\xff\xfe"', "bad")


def _archive(tmp_path, **lies) -> str:
  members = [hostile.stored("a.json", b'{"a": 1}'), hostile.deflated("b.bin", bytes(5000))]
  p = tmp_path / "a.zip"
  p.write_bytes(hostile.zip_bytes(members, **lies))
  return str(p)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1 << 32 - 1), st.sampled_from(["a.json", "b.bin"]),
       st.sampled_from(["local_size", "central_size", "both"]))
def test_a_lying_size_is_refused_or_harmless(tmp_path_factory, size, member, where):
  tmp = tmp_path_factory.mktemp("zip")
  truth = {"a.json": b'{"a": 1}', "b.bin": bytes(5000)}[member]
  lie = {member: size}
  kw = dict(local_size=lie, central_size=lie) if where == "both" else {where: lie}
  with open(_archive(tmp, **kw), "rb") as f:
    try:
      zf = _files.open_zip(f, "arch")
      data = _files.read_member(zf, member, 1 << 16, "arch")
    except FileFormatError as e:
      assert "arch" in str(e) and member in str(e)
      return
  assert data == truth  # accepted only when the lie changes nothing that is read
  assert size == len(truth)


def test_stored_member_is_read_in_place_and_crc_checked(tmp_path):
  w = hostile.keras_h5_bytes()
  path = pathlib.Path(hostile.keras_zip(tmp_path / "m.keras", weights=w))
  with open(path, "rb") as f, _files.open_zip(f, "m") as zf:
    with _files.member_file(zf, f, "model.weights.h5", "m") as window:
      assert window.read() == w
      window.seek(10)
      assert window.read(5) == w[10:15]
  blob = bytearray(path.read_bytes())
  blob[blob.index(w) + len(w) // 2] ^= 0xFF  # one bit of the weights member flipped
  path.write_bytes(bytes(blob))
  with open(path, "rb") as f, _files.open_zip(f, "m") as zf:
    with pytest.raises(FileFormatError, match="fails its CRC check"):
      with _files.member_file(zf, f, "model.weights.h5", "m"):
        pass


def test_compressed_member_is_expanded_to_a_bounded_temporary_file(tmp_path):
  w = hostile.keras_h5_bytes()
  path = hostile.keras_zip(tmp_path / "m.keras", replace=hostile.deflated("model.weights.h5", w))
  with open(path, "rb") as f, _files.open_zip(f, "m") as zf:
    with _files.member_file(zf, f, "model.weights.h5", "m") as tmp:
      assert tmp.read() == w


def test_open_regular_names_what_it_refuses(tmp_path):
  fifo = tmp_path / "p"
  os.mkfifo(fifo)
  with pytest.raises(FileFormatError, match=r"p is a FIFO \(named pipe\), not a regular file"):
    _files.open_regular(str(fifo))
  with pytest.raises(IsADirectoryError, match="is a directory"):
    _files.open_regular(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no such file"):
    _files.open_regular(str(tmp_path / "missing"))
  os.symlink(tmp_path / "missing", tmp_path / "dangling")
  with pytest.raises(FileNotFoundError, match=r"dangling is a symlink to .*missing"):
    _files.stat_path(str(tmp_path / "dangling"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), max_size=3).map(tuple), min_size=1, max_size=4),
       st.lists(st.integers(0, 6), max_size=3).map(tuple),
       st.sampled_from([np.float16, np.float32, np.float64, np.int8]))
def test_budget_allows_no_array_larger_than_likes_largest_leaf(like_shapes, shape, dtype):
  like = [np.zeros(s, np.float32) for s in like_shapes]
  budget = _files.Budget.like(like)
  sizes = [int(np.prod(s)) for s in like_shapes]
  n = int(np.prod(shape))
  try:
    budget.charge(shape, dtype, "ds")
  except FileFormatError as e:
    assert n > max(max(sizes), 1)
    assert re.search(rf"ds declares shape .*\({n} elements\), more than any leaf of like holds "
                     rf"\(the largest of its {len(sizes)} leaves has {max(sizes)}\)", str(e))
  else:
    assert n <= max(max(sizes), 1)
  assert budget.total == sum(sizes) * 8 * _files.COPIES + _files.SCALAR_SLACK_BYTES


def test_budget_total_is_five_copies_of_like():
  budget = _files.Budget.like([np.zeros((1000,), np.float32)])
  for _ in range(5 + _files.SCALAR_SLACK_BYTES // 8000):
    budget.charge((1000,), np.float64, "ds")  # 5 copies at 8 bytes, and the slack
  with pytest.raises(FileFormatError, match=r"ds declares 8000 bytes; with the \d+ read before, "
                     r"that passes the \d+ bytes this import may read \(5 copies of like\)"):
    budget.charge((1000,), np.float64, "ds")


def test_pickle_globals_reads_stack_global_without_running_it():
  class Boom:
    def __reduce__(self):
      return (os.system, ("false",))

  import pickle

  for protocol in (0, 2, 4, 5):
    found = _files.pickle_globals(io.BytesIO(pickle.dumps(Boom(), protocol=protocol)))
    assert found == [f"{os.system.__module__}.system"], (protocol, found)


def test_zip_with_too_many_members_is_refused(tmp_path):
  p = tmp_path / "many.zip"
  with zipfile.ZipFile(p, "w") as zf:
    for i in range(_files.MAX_MEMBERS + 1):
      zf.writestr(f"{i}", b"")
  with open(p, "rb") as f, pytest.raises(FileFormatError, match="10001 members"):
    _files.open_zip(f, "many")


_KERAS_BLOB = {}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1,
                max_size=4), st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_a_damaged_keras_archive_gives_the_exact_weights_or_a_value_error(
    tmp_path_factory, flips, cut):
  """Random bytes of a .keras changed (or cut off): the CRC-checked weights, or a refusal.

  The h5 member's CRC is checked before HDF5 sees a byte of it, so HDF5 never
  parses damaged bytes from an archive (a damaged plain .h5 can crash HDF5
  itself: docs/reliability.md).
  """
  import jax.numpy as jnp

  from optax_nadam import interop

  if "blob" not in _KERAS_BLOB:
    d = tmp_path_factory.mktemp("keras_fuzz")
    _KERAS_BLOB["blob"] = pathlib.Path(hostile.keras_zip(d / "ok.keras")).read_bytes()
    _KERAS_BLOB["dir"] = d
  blob = bytearray(_KERAS_BLOB["blob"])
  for where, value in flips:
    blob[int(where * len(blob))] = value
  if cut is not None:
    blob = blob[:int(cut * len(blob))]
  path = _KERAS_BLOB["dir"] / "damaged.keras"
  path.write_bytes(bytes(blob))
  like = [jnp.zeros(s, jnp.float32) for s in hostile.LIKE_SHAPES]
  try:
    got = interop.params_from_keras(path, like)
  except ValueError as e:
    assert "damaged.keras" in str(e), str(e)
    return
  np.testing.assert_array_equal(np.asarray(got[0]), hostile.KERNEL)
  np.testing.assert_array_equal(np.asarray(got[1]), hostile.BIAS)


_TF_WRITER = """
import sys
import tensorflow as tf
ckpt = tf.train.Checkpoint(v=tf.Variable(tf.zeros([4096])), w=tf.Variable(tf.ones([3, 4])))
print(ckpt.save(sys.argv[1]))
"""


@pytest.mark.slow
def test_tf_checkpoint_variable_larger_than_like_is_refused_before_reading(tmp_path):
  """A real TF checkpoint: its directory is resolved without TF, its variables checked by size."""
  import subprocess

  import jax.numpy as jnp

  from optax_nadam import interop

  out = subprocess.run([sys.executable, "-c", _TF_WRITER, str(tmp_path / "ckpt" / "c")],
                       env=_subproc.script_env(1), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  like = [jnp.zeros((3, 4), jnp.float32)]
  with pytest.raises(FileFormatError, match=r"ckpt: variable v/\.ATTRIBUTES/VARIABLE_VALUE "
                     r"declares shape \(4096,\) float32 \(4096 elements\), more than any leaf of "
                     r"like holds \(the largest of its 1 leaves has 12\)"):
    interop.params_from_keras(tmp_path / "ckpt", like)
  got = interop.params_from_keras(tmp_path / "ckpt", [jnp.zeros((4096,)), jnp.zeros((3, 4))])
  np.testing.assert_array_equal(np.asarray(got[0]), np.zeros(4096))  # the same file, read
  np.testing.assert_array_equal(np.asarray(got[1]), np.ones((3, 4)))
