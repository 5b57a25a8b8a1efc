"""Fixtures shared by the Keras interop tests: the files the real peers wrote."""

import pytest

from tests.helpers import subproc as _subproc


@pytest.fixture(scope="session")
def files(tmp_path_factory):
  """Directory of files written by the peers (see ``tests/scripts/keras_files_writer.py``)."""
  out = tmp_path_factory.mktemp("keras_files")
  _subproc.run_script("keras_files_writer", [str(out)], devices=1, timeout=600)
  return out
