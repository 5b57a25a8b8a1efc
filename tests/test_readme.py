"""Every ```python block in README.md runs (each in a fresh interpreter)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
  env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, (
      f"README example {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}")
