"""The README's test command leaves out the tests marked slow; CI's second step runs them."""

import pathlib

import pytest

pytest_plugins = ["pytester"]

CONFTEST = pathlib.Path(__file__).resolve().parents[1] / "conftest.py"
PYPROJECT = """
[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["slow: long"]
addopts = "--strict-markers"
"""
MODULE = """
import pytest

def test_fast():
  pass

@pytest.mark.slow
def test_slow():
  pass

@pytest.mark.slow
@pytest.mark.parametrize("x", [1, 2])
def test_slow_param(x):
  pass
"""


@pytest.fixture
def project(pytester):
  pytester.makefile(".toml", pyproject=PYPROJECT)
  tests = pytester.mkpydir("tests")
  (tests / "conftest.py").write_text(CONFTEST.read_text())
  (tests / "test_mod.py").write_text(MODULE)
  return pytester


@pytest.mark.parametrize("args, passed, deselected", [
    ([], 1, 3),  # the README's bare command
    (["-m", "slow"], 3, 1),  # CI's second step
    (["-m", "slow or not slow"], 4, 0),
    (["tests/test_mod.py"], 4, 0),  # a named file runs all of it
    (["tests/test_mod.py", "-k", "slow_param"], 2, 2),
])
def test_bare_run_leaves_out_slow_tests_and_the_two_steps_cover_all(project, args, passed,
                                                                      deselected):
  result = project.runpytest_subprocess("-q", "-p", "no:cacheprovider", *args)
  result.assert_outcomes(passed=passed, deselected=deselected)


def test_slow_step_selecting_nothing_exits_5(pytester):
  pytester.makefile(".toml", pyproject=PYPROJECT)
  tests = pytester.mkpydir("tests")
  (tests / "conftest.py").write_text(CONFTEST.read_text())
  (tests / "test_mod.py").write_text("def test_fast():\n  pass\n")
  result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-m", "slow")
  assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
