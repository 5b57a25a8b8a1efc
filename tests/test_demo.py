"""`python -m optax_nadam`, run the way a newcomer runs it: in a fresh interpreter."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from optax_nadam import _demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args, cwd, code=None, timeout=240):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "optax_nadam"]
  return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _table(stdout):
  rows = re.findall(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+)% \| ([\d.]+) \| ([\d.]+) \|$", stdout,
                    flags=re.M)
  return {name: (float(loss), float(acc), float(t0), float(t1))
          for name, loss, acc, t0, t1 in rows}


def test_help_lists_the_flags(tmp_path):
  result = _run(["--help"], tmp_path)
  assert result.returncode == 0, result.stderr
  for flag in ("--steps", "--out", "--help"):
    assert flag in result.stdout


@pytest.mark.slow
def test_default_run_trains_all_three_and_writes_the_png(tmp_path):
  """The default run (what the README's first command does) to >= 95% test accuracy."""
  result = _run(["--out", "curves"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  table = _table(result.stdout)
  assert set(table) == {"optax_nadam.nadam", "optax.nadam", "optax.adam"}, result.stdout
  for name, (loss, acc, _, _) in table.items():
    assert acc >= 95.0, (name, acc)
    assert 0.0 < loss < 0.1, (name, loss)
  png = tmp_path / "curves" / "optax_nadam_demo.png"
  assert f"Loss curves written to {png.resolve()}" in result.stdout
  assert png.read_bytes()[:8] == PNG_MAGIC
  assert "step" in result.stderr  # the tqdm progress bar writes to stderr
  assert re.search(r"^\(jax \S+ on cpu; \d+ CPU cores, ", result.stdout, flags=re.M)


def test_short_run_with_explicit_png_path(tmp_path):
  result = _run(["--steps", "30", "--out", "sub/x.png", "--no-progress"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(_table(result.stdout)) == 3
  assert (tmp_path / "sub" / "x.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--steps", "many"], "invalid int value"),
])
def test_bad_flags_are_refused(tmp_path, args, message):
  result = _run(args, tmp_path)
  assert result.returncode == 2
  assert message in result.stderr
  assert not list(tmp_path.iterdir())


def test_unwritable_out_is_refused_before_training(tmp_path):
  (tmp_path / "a_file").write_text("")
  result = _run(["--out", "a_file/curves.png"], tmp_path, timeout=60)
  assert result.returncode == 2
  assert "--out: cannot create the directory for a_file/curves.png" in result.stderr
  assert "step" not in result.stdout  # no table: it stopped before training


def test_missing_demo_extra_says_what_to_install(tmp_path):
  # Hide flax and scikit-learn from the interpreter, as in an install without the extra.
  code = (
      "import runpy, sys; sys.modules['flax'] = None; sys.modules['sklearn'] = None; "
      "sys.argv = ['optax_nadam'] + sys.argv[1:]; "
      "runpy.run_module('optax_nadam', run_name='__main__')"
  )
  result = _run(["--steps", "5"], tmp_path, code=code)
  assert result.returncode == 2
  assert "flax, scikit-learn" in result.stderr
  assert 'pip install "optax_nadam[demo]"' in result.stderr
  assert "pip install flax scikit-learn" in result.stderr
  assert not list(tmp_path.iterdir())


def test_batches_cover_each_epoch_once():
  idx = _demo.batch_indices(n=1000, steps=20, batch_size=128, seed=3)
  assert idx.shape == (20, 128)
  first_epoch = idx[: 1000 // 128].ravel()
  assert len(np.unique(first_epoch)) == first_epoch.size
  np.testing.assert_array_equal(idx, _demo.batch_indices(1000, 20, 128, seed=3))
