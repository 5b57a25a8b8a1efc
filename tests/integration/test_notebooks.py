"""The Colab notebooks in colab/ run top to bottom in a fresh kernel, as a Colab user runs them.

Each notebook is executed with nbclient in a new kernel started from this interpreter (a
kernelspec written to a temporary directory, so a `python3` kernelspec elsewhere on the
machine cannot swap in another Python), with the variables a notebook sets for itself
(`XLA_FLAGS`, `KERAS_BACKEND`) removed from its environment. The tests then read what the
notebooks printed.
"""

import json
import os
import pathlib
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parents[2] / "colab"
NOTEBOOKS = ("quickstart", "parity", "data_parallel")
KERNEL = "optax-nadam-tests"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
  """A kernelspec whose kernel is this very interpreter."""
  root = tmp_path_factory.mktemp("kernels")
  spec = root / KERNEL
  spec.mkdir()
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "optax_nadam tests",
      "language": "python",
  }))
  return root


def _execute(nb, kernel_dir, cwd):
  """Runs `nb` in place in a fresh kernel; returns the text of its stream outputs."""
  km = KernelManager(kernel_name=KERNEL,
                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
  client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                          resources={"metadata": {"path": str(cwd)}})
  client.execute(env=env)  # raises CellExecutionError naming the cell on any error
  return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs if out.output_type == "stream")


def _run(name, kernel_dir, cwd):
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  text = _execute(nb, kernel_dir, cwd)
  images = sum("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.outputs)
  return text, images


def _number(pattern, text):
  match = re.search(pattern, text, flags=re.M)
  assert match, f"no match for {pattern!r} in:\n{text}"
  return float(match.group(1))


def test_kernel_is_this_interpreter(kernel_dir, tmp_path):
  cell = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
  nb = nbformat.v4.new_notebook(cells=[cell])
  assert _execute(nb, kernel_dir, tmp_path).strip() == sys.executable


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_self_contained(name):
  """Small in the repo, opens in Colab, and needs nothing from this checkout but the package."""
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert not re.search(r"^\s*(from|import)\s+(tests|benchmarks)\b", cell.source, flags=re.M)
  # The first code cell installs what is missing, and only what is missing.
  first = code[0].source
  assert "importlib.util.find_spec" in first and "if missing:" in first
  assert "optax_nadam-*.whl" in first
  assert not re.search(r"^\s*(import|from)\s+(jax|optax|flax)\b", first, flags=re.M)
  assert not any("OWNER" in cell.source for cell in nb.cells)  # no placeholder repository


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_takes_a_wheel_next_to_it_or_says_how_to_build_one(name, tmp_path,
                                                                         monkeypatch):
  """The first cell where optax_nadam is missing (a fresh Colab runtime), run here as it is."""
  import importlib.util
  import subprocess

  first = next(c for c in nbformat.read(COLAB / f"{name}.ipynb", as_version=4).cells
               if c.cell_type == "code").source
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "optax_nadam" else real_find_spec(n, *a))
  calls = []
  monkeypatch.setattr(subprocess, "check_call", calls.append)
  monkeypatch.setattr(os, "environ", dict(os.environ))  # the cells set XLA_FLAGS, KERAS_BACKEND
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ModuleNotFoundError, match=r"pip wheel --no-deps \. -w dist"):
    exec(first, {})
  assert calls == []
  for version in ("0.1.0", "0.2.0"):
    (tmp_path / f"optax_nadam-{version}-py3-none-any.whl").write_bytes(b"")
  exec(first, {})
  [(argv)] = calls
  assert argv[:4] == [sys.executable, "-m", "pip", "install"]
  assert argv[5:] == ["optax_nadam-0.2.0-py3-none-any.whl"]  # the newest, nothing else missing


@pytest.mark.slow
def test_quickstart(kernel_dir, tmp_path):
  text, images = _run("quickstart", kernel_dir, tmp_path)
  assert "nothing to install" in text
  assert _number(r"^final loss (\S+);", text) < 1e-6
  final_lr = _number(r"^learning rate after 50 steps \S+, after 500 steps (\S+)$", text)
  assert final_lr == pytest.approx(1e-5, rel=1e-3)  # the schedule's end value
  assert _number(r"^test accuracy: (\S+)%$", text) >= 95.0
  assert images == 2  # the schedule and the NNX loss curve


@pytest.mark.slow
def test_parity(kernel_dir, tmp_path):
  """Live runs of every peer: torch, tf-keras at rounding; Keras 3, optax.nadam visibly off."""
  text, images = _run("parity", kernel_dir, tmp_path)
  assert "(jax backend)" in text  # KERAS_BACKEND was set by the notebook, not inherited

  def gap(name):
    return _number(rf"^max gap to {re.escape(name)}: (\S+) ", text)

  assert gap("torch.optim.NAdam") < 1e-5
  assert gap("tf_keras legacy Nadam") < 1e-5
  assert gap("optax_nadam.nadam(momentum_decay=1.0) vs Keras 3") < 1e-5
  assert gap("Keras 3 Nadam") > 1e-2
  assert gap("optax.nadam") > 1e-2
  assert images == 1


@pytest.mark.slow
def test_data_parallel(kernel_dir, tmp_path):
  text, _ = _run("data_parallel", kernel_dir, tmp_path)
  assert re.search(r"^8 cpu devices", text, flags=re.M), text  # the first cell's XLA_FLAGS
  assert "replicas differ by 0.0e+00" in text
  for name in ("pmap", "jit data parallel", "jit FSDP", "shard_map"):
    assert _number(rf"^  {name} +(\S+)$", text) <= 1e-5, name
  for leaf, shard in (("w1", "(64, 16) of (64, 128)"), ("b1", "(16,) of (128,)"),
                      ("w2", "(16, 10) of (128, 10)")):
    assert re.search(rf"^{leaf} .* {re.escape(shard)}$", text, flags=re.M), (leaf, text)
  assert "count: 50 replicated on 8 devices" in text
