"""`python -m optax_nadam`, run the way a newcomer runs it: in a fresh interpreter."""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from optax_nadam._demo import cli, report, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args, cwd, code=None, timeout=240, **env_changes):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_changes)
  cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "optax_nadam"]
  return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _table(stdout):
  rows = re.findall(
      r"^\| (\S+) \| ([\d.]+) \| ([\d.]+)% \| ([\d.]+) \| (\d+) \| (\d+)-(\d+) \|$", stdout,
      flags=re.M)
  return {name: (float(loss), float(acc), float(t0), int(med), int(p10), int(p90))
          for name, loss, acc, t0, med, p10, p90 in rows}


def test_help_lists_the_flags(tmp_path):
  result = _run(["--help"], tmp_path)
  assert result.returncode == 0, result.stderr
  for flag in ("--steps", "--out", "--help"):
    assert flag in result.stdout
  assert "in a new temporary directory" in " ".join(result.stdout.split())


@pytest.mark.slow
def test_default_run_trains_all_three_and_writes_the_png(tmp_path):
  """The README's first command, `python -m optax_nadam`, to >= 95% test accuracy."""
  cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
  cwd.mkdir()
  tmp.mkdir()
  result = _run([], cwd, TMPDIR=str(tmp))
  assert result.returncode == 0, result.stderr[-3000:]
  table = _table(result.stdout)
  assert set(table) == {"optax_nadam.nadam", "optax.nadam", "optax.adam"}, result.stdout
  for name, (loss, acc, _, median, p10, p90) in table.items():
    assert 0 < p10 <= median <= p90, (name, p10, median, p90)
    assert acc >= 95.0, (name, acc)
    assert 0.0 < loss < 0.1, (name, loss)
  # The plot: in a new directory under the temporary one, printed; nothing in the current one.
  assert not list(cwd.iterdir())
  [png] = tmp.glob("optax_nadam_demo-*/optax_nadam_demo.png")
  assert f"Loss curves written to {png.resolve()}" in result.stdout
  assert png.read_bytes()[:8] == PNG_MAGIC
  assert "step" in result.stderr  # the tqdm progress bar writes to stderr
  assert re.search(r"^\(jax \S+ on cpu; \d+ CPU cores, ", result.stdout, flags=re.M)


@pytest.mark.slow
def test_short_run_with_explicit_png_path(tmp_path):
  result = _run(["--steps", "30", "--out", "sub/x.png", "--no-progress"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(_table(result.stdout)) == 3
  assert "median and 10th-90th percentile of 30 steps each" in result.stdout
  png = tmp_path / "sub" / "x.png"
  assert f"Loss curves written to {png.resolve()}" in result.stdout
  assert png.read_bytes()[:8] == PNG_MAGIC
  assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_png_path_of_a_file_a_directory_and_a_suffixless_name(tmp_path):
  assert report.png_path("sub/x.png") == pathlib.Path("sub/x.png")
  assert report.png_path(str(tmp_path)) == tmp_path / report.PNG_NAME
  assert report.png_path("curves") == pathlib.Path("curves") / report.PNG_NAME
  (tmp_path / "dir.png").mkdir()  # an existing directory, whatever its name
  assert report.png_path(str(tmp_path / "dir.png")) == tmp_path / "dir.png" / report.PNG_NAME


BAD_FLAGS = [
    (["--steps", "0"], "--steps must be 1 to 20000, got 0"),
    (["--steps", "-5"], "--steps must be 1 to 20000, got -5"),
    (["--steps", "20001"], "--steps must be 1 to 20000, got 20001"),
    (["--steps", "many"], "invalid int value"),
    (["--lr", "-1"], "--lr must be > 0 and finite in float32"),
    (["--lr", "0"], "--lr must be > 0 and finite in float32"),
    (["--lr", "nan"], "--lr must be > 0 and finite in float32 (<= 3.403e+38), got nan"),
    (["--lr", "inf"], "--lr must be > 0 and finite in float32 (<= 3.403e+38), got inf"),
    (["--lr", "1e39"], "--lr must be > 0 and finite in float32 (<= 3.403e+38), got 1e+39"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "100000"],
     "--batch-size must be at most the 1437 training examples, got 100000"),
    (["--batch-size", "1438"], "--batch-size must be at most the 1437 training examples, got 1438"),
    (["--seed", "-1"], "--seed must be 0 to 4294967295 (scikit-learn's range), got -1"),
    (["--seed", str(2**32)],
     "--seed must be 0 to 4294967295 (scikit-learn's range), got 4294967296"),
    (["--out", "/proc/x.png"], "--out: cannot write /proc/x.png"),
    (["--out", "curves.foo"], "--out: matplotlib cannot write '.foo' files (curves.foo)"),
]


@pytest.mark.parametrize("args, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_refused_before_training(tmp_path, monkeypatch, capsys, args, message):
  def no_training(*args, **kwargs):
    raise AssertionError("training started")

  monkeypatch.setattr(train, "run", no_training)
  monkeypatch.setattr(train, "train_all", no_training)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "usage: python -m optax_nadam" in err
  assert message in err, err
  assert not list(tmp_path.iterdir())  # nothing written, not even a probe file


def test_good_edge_flags_pass_the_checks(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(train, "run", lambda **kw: calls.append(kw) or ([], tmp_path / "x.svg"))
  monkeypatch.chdir(tmp_path)
  (tmp_path / "old.png").write_bytes(b"keep")
  argv = ["--steps", "20000", "--batch-size", "1437", "--lr", "3.4e38", "--seed", str(2**32 - 1),
          "--no-progress"]
  assert cli.main(argv + ["--out", "x.svg"]) == 0
  assert cli.main(argv + ["--out", "old.png"]) == 0
  assert [c["out"] for c in calls] == ["x.svg", "old.png"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # the probe left no file
  # Without --out: a new directory under the temporary one, never the current directory.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  (tmp_path / "tmp").mkdir()
  assert cli.main(argv) == 0 and cli.main(argv) == 0
  first, second = (pathlib.Path(c["out"]) for c in calls[2:])
  assert first != second and first.parent == second.parent == tmp_path / "tmp"
  assert first.name.startswith("optax_nadam_demo-") and first.is_dir()
  assert (tmp_path / "old.png").read_bytes() == b"keep"


def test_run_is_refused_with_a_usage_error_in_a_fresh_interpreter(tmp_path):
  result = _run(["--batch-size", "100000"], tmp_path, timeout=120)
  assert result.returncode == 2
  assert "--batch-size must be at most the 1437 training examples" in result.stderr
  assert "Traceback" not in result.stderr
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


@pytest.mark.slow
def test_listing_order_changes_neither_trajectories_nor_what_is_timed():
  import optax

  import optax_nadam

  data = train.load_data(0)
  txs = {"ours": optax_nadam.nadam(3e-3), "adam": optax.adam(3e-3)}
  first = train.train_all(txs, data, steps=8, batch_size=64, warmup=1)
  second = train.train_all(dict(reversed(list(txs.items()))), data, steps=8, batch_size=64,
                           warmup=1)
  assert [r.name for r in first] == ["ours", "adam"]
  assert [r.name for r in second] == ["adam", "ours"]
  by_name = {r.name: r for r in second}
  for r in first:
    np.testing.assert_array_equal(r.losses, by_name[r.name].losses)
    assert r.final_loss == by_name[r.name].final_loss
    assert r.step_times.count == 8
    assert 0 < r.step_times.p10 <= r.step_times.median <= r.step_times.p90
  assert not np.array_equal(first[0].losses, first[1].losses)  # two different optimizers


def test_batches_cover_each_epoch_once():
  idx = train.batch_indices(n=1000, steps=20, batch_size=128, seed=3)
  assert idx.shape == (20, 128)
  first_epoch = idx[: 1000 // 128].ravel()
  assert len(np.unique(first_epoch)) == first_epoch.size
  np.testing.assert_array_equal(idx, train.batch_indices(1000, 20, 128, seed=3))
