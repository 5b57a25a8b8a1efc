"""Test-wide setup: peers' environment variables must be set before they import."""

import os

# Keras 3 is exercised on the jax backend; set before any import of keras.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pytest_collection_modifyitems(config, items):
  """The README's bare ``python -m pytest -q`` leaves out the tests marked ``slow``.

  Only a bare run (no paths on the command line, no ``-m``) does: naming a
  file, directory or test runs all of it (the guides' ``pytest -s FILE``
  commands print what slow tests measure), and ``-m slow`` runs just the slow
  ones, as CI's second step (.ci/run) does.
  """
  import pytest

  if config.option.markexpr or config.args_source is pytest.Config.ArgsSource.ARGS:
    return
  slow = [item for item in items if item.get_closest_marker("slow") is not None]
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if item.get_closest_marker("slow") is None]
