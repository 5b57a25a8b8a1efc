"""The demo behind `python -m optax_nadam`: a Flax NNX MLP on scikit-learn's digits.

Trains the same model from the same initialisation with `optax_nadam.nadam`,
`optax.nadam` and `optax.adam`, then prints a table (final loss, test accuracy,
time) and writes a loss-curve PNG. Everything it needs ships with the `demo`
extra; the data (`sklearn.datasets.load_digits`) ships inside scikit-learn.
"""

import dataclasses
import pathlib
import time
from typing import Callable, Optional

import numpy as np

# Import name -> pip name of what the demo needs beyond the core dependencies.
DEMO_REQUIREMENTS = {
    "flax": "flax",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}


def missing_requirements() -> list[str]:
  """Lists the pip names of the demo's requirements that cannot be imported.

  Returns:
    The pip names (e.g. ``"scikit-learn"``) of the missing packages, empty when
    all are installed.
  """
  import importlib

  missing = []
  for module, pip_name in DEMO_REQUIREMENTS.items():
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(pip_name)
  return missing


@dataclasses.dataclass
class RunResult:
  """Outcome of training one optimizer.

  Attributes:
    name: label of the optimizer in the table and the plot.
    losses: training (mini-batch) loss before each step, shape ``[steps]``.
    final_loss: mean cross-entropy on the whole training set after training.
    test_accuracy: accuracy on the held-out split after training.
    compile_seconds: wall time of the first step (tracing and compilation).
    seconds: wall time of the other steps.
  """

  name: str
  losses: np.ndarray
  final_loss: float
  test_accuracy: float
  compile_seconds: float
  seconds: float


def load_data(seed: int = 0):
  """Loads scikit-learn's 8x8 digits, scaled to [0, 1], split 80/20 (stratified).

  Args:
    seed: seed of the train/test split.

  Returns:
    ``(x_train, y_train, x_test, y_test)`` as float32 / int32 numpy arrays.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  y = y.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
  return x_tr, y_tr, x_te, y_te


def make_mlp(seed: int = 0, hidden: int = 64):
  """A two-layer Flax NNX MLP for 64 inputs and 10 classes.

  Args:
    seed: seed of the parameter initialisation.
    hidden: width of the hidden layer.

  Returns:
    An `nnx.Module` mapping ``[batch, 64]`` to ``[batch, 10]`` logits.
  """
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.hidden = nnx.Linear(64, hidden, rngs=rngs)
      self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  return MLP(nnx.Rngs(seed))


def batch_indices(n: int, steps: int, batch_size: int, seed: int = 0) -> np.ndarray:
  """Mini-batch indices for `steps` steps: shuffled epochs, fixed seed.

  Args:
    n: number of training examples.
    steps: number of steps.
    batch_size: examples per step.
    seed: seed of the shuffling.

  Returns:
    An int array of shape ``[steps, batch_size]``.
  """
  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  epochs = -(-steps // per_epoch)
  order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
  return order[: steps * batch_size].reshape(steps, batch_size)


def train(
    name: str,
    tx,
    data,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
) -> RunResult:
  """Trains `make_mlp(seed)` with `tx` in an `nnx.jit` step with `nnx.Optimizer`.

  Args:
    name: label of the run.
    tx: an `optax.GradientTransformation`.
    data: ``(x_train, y_train, x_test, y_test)`` from `load_data`.
    steps: number of optimizer steps.
    batch_size: examples per step.
    seed: seed of the initialisation and of the batch order.
    progress: called with 1 after each step (e.g. a tqdm bar's ``update``).

  Returns:
    A `RunResult`.
  """
  import jax.numpy as jnp
  import optax
  from flax import nnx

  x_tr, y_tr, x_te, y_te = data
  model = make_mlp(seed)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss

  idx = batch_indices(len(x_tr), steps, batch_size, seed)
  xb, yb = jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])
  losses = []
  start = time.perf_counter()
  for i in range(steps):
    losses.append(step(model, optimizer, xb[i], yb[i]))
    if i == 0:
      losses[0].block_until_ready()
      compiled = time.perf_counter()
    if progress is not None:
      progress(1)
  losses = np.asarray(jnp.stack(losses))
  seconds = time.perf_counter() - compiled
  compile_seconds = compiled - start
  final_loss = float(loss_fn(model, jnp.asarray(x_tr), jnp.asarray(y_tr)))
  accuracy = float(jnp.mean(jnp.argmax(model(jnp.asarray(x_te)), -1) == jnp.asarray(y_te)))
  return RunResult(name, losses, final_loss, accuracy, compile_seconds, seconds)


def optimizers(learning_rate: float) -> dict:
  """The optimizers the demo compares, all with the same learning rate.

  Args:
    learning_rate: the learning rate of each.

  Returns:
    A dict label -> `optax.GradientTransformation`.
  """
  import optax

  from optax_nadam import nadam

  return {
      "optax_nadam.nadam": nadam(learning_rate),
      "optax.nadam": optax.nadam(learning_rate),
      "optax.adam": optax.adam(learning_rate),
  }


def format_table(results: list[RunResult]) -> str:
  """A plain-text (Markdown) table of the results.

  Args:
    results: the runs.

  Returns:
    The table as a string.
  """
  lines = [
      "| optimizer | final train loss | test accuracy | first step (s) | other steps (s) |",
      "|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
        f"| {r.name} | {r.final_loss:.4f} | {100 * r.test_accuracy:.2f}% "
        f"| {r.compile_seconds:.2f} | {r.seconds:.2f} |"
    )
  return "\n".join(lines)


def plot(results: list[RunResult], path: pathlib.Path, title: str = "") -> pathlib.Path:
  """Writes the training-loss curves (log scale, 20-step moving average) to a PNG.

  Args:
    results: the runs.
    path: file to write.
    title: optional figure title.

  Returns:
    The path written.
  """
  import matplotlib

  matplotlib.use("Agg")  # headless: no display needed
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
  for r in results:
    window = max(1, min(20, len(r.losses) // 10))
    smooth = np.convolve(r.losses, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(len(smooth)) + window, smooth, label=r.name, lw=1.6)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (moving average)")
  ax.set_title(title or "MLP on scikit-learn digits: same init, same batches")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def png_path(out: str) -> pathlib.Path:
  """Where the demo writes its PNG for an ``--out`` value.

  Args:
    out: a file path, or a directory (existing, or given without a suffix).

  Returns:
    ``out`` itself, or ``out/optax_nadam_demo.png`` for a directory.
  """
  path = pathlib.Path(out)
  if path.is_dir() or not path.suffix:
    path = path / "optax_nadam_demo.png"
  return path


def machine() -> str:
  """A one-line description of where the demo ran, for quoting its timings.

  Returns:
    e.g. ``"jax 0.10.2 on cpu; 2 CPU cores, x86_64, Python 3.11.2"``.
  """
  import os
  import platform

  import jax

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return (f"jax {jax.__version__} on {jax.default_backend()}; {cores} CPU cores, "
          f"{platform.machine()}, Python {platform.python_version()}")


def run(
    steps: int = 600,
    out: str = "optax_nadam_demo.png",
    learning_rate: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[list[RunResult], pathlib.Path]:
  """Runs the whole demo: trains each optimizer, writes the PNG.

  Args:
    steps: optimizer steps per run.
    out: path of the PNG; a directory, or a path without a suffix, gets
      ``optax_nadam_demo.png`` inside.
    learning_rate: learning rate of every optimizer.
    batch_size: examples per step.
    seed: seed of the initialisation, the batches and the split.
    show_progress: show a tqdm progress bar.

  Returns:
    ``(results, png_path)``.
  """
  import jax
  import optax
  from tqdm import tqdm

  path = png_path(out)
  data = load_data(seed)
  txs = optimizers(learning_rate)
  # Start the backend and pay the one-time costs of the first `nnx.jit` step (~1 s) on a throwaway
  # one-step run, so that whichever optimizer runs first is not charged for them in the table.
  jax.block_until_ready(jax.numpy.zeros(()))
  train("warm-up", optax.sgd(0.0), data, 1, batch_size, seed)
  results = []
  with tqdm(total=steps * len(txs), disable=not show_progress, unit="step") as bar:
    for name, tx in txs.items():
      bar.set_description(name)
      results.append(train(name, tx, data, steps, batch_size, seed, progress=bar.update))
  plot(results, path)
  return results, path.resolve()
