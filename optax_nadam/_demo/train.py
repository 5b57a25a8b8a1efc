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

from optax_nadam import _timing as timing
from optax_nadam._demo.report import plot, png_path

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
    compile_seconds: wall time of the first step (tracing and compilation), run
      on a throwaway copy of the model before the timed run.
    step_times: the timed run's per-step wall times (`timing.StepTimes`).
  """

  name: str
  losses: np.ndarray
  final_loss: float
  test_accuracy: float
  compile_seconds: float
  step_times: timing.StepTimes


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


def train_size(seed: int = 0) -> int:
  """Number of training examples `load_data(seed)` returns (the largest batch size).

  Args:
    seed: seed of the split.

  Returns:
    The size of the training split.
  """
  return len(load_data(seed)[0])


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


def _loss(model, x, y):
  import optax

  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _step_fn():
  """A fresh `nnx.jit` training step (each optimizer gets its own compile cache)."""
  from flax import nnx

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss

  return step


def train_all(
    txs: dict,
    data,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    warmup: int = 5,
    progress: Optional[Callable[[int], None]] = None,
) -> list[RunResult]:
  """Trains `make_mlp(seed)` with each of `txs`, interleaved step by step, and times the steps.

  Each optimizer first compiles and runs `warmup` steps on a throwaway copy of
  the model; then every optimizer trains its own model from the same
  initialisation on the same batches, one step each per round, in the orders
  of `timing.schedule`, so that no optimizer is charged for its place
  in the list. The round's batch goes to the device before the round, untimed.

  Args:
    txs: label -> `optax.GradientTransformation`, e.g. `optimizers(...)`.
    data: ``(x_train, y_train, x_test, y_test)`` from `load_data`.
    steps: number of optimizer steps of each optimizer.
    batch_size: examples per step; at most the number of training examples.
    seed: seed of the initialisation and of the batch order.
    warmup: untimed steps of each optimizer on its throwaway copy, after the
      compiling one.
    progress: called with the number of steps taken (``len(txs)`` after
      each round), e.g. a tqdm bar's ``update``.

  Returns:
    A `RunResult` per optimizer, in the order of `txs`.
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  x_tr, y_tr, x_te, y_te = data
  idx = batch_indices(len(x_tr), steps, batch_size, seed)
  batch = {}

  def put_batch(i):
    batch["x"], batch["y"] = jnp.asarray(x_tr[idx[i]]), jnp.asarray(y_tr[idx[i]])
    jax.block_until_ready((batch["x"], batch["y"]))

  fns = {name: _step_fn() for name in txs}
  compile_seconds = {}
  put_batch(0)
  for name, tx in txs.items():
    model = make_mlp(seed)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    start = time.perf_counter()
    fns[name](model, optimizer, batch["x"], batch["y"]).block_until_ready()
    compile_seconds[name] = time.perf_counter() - start
    for _ in range(warmup):
      fns[name](model, optimizer, batch["x"], batch["y"]).block_until_ready()

  models = {name: make_mlp(seed) for name in txs}
  opts = {name: nnx.Optimizer(models[name], tx, wrt=nnx.Param) for name, tx in txs.items()}

  def contestant(name):
    return lambda i: fns[name](models[name], opts[name], batch["x"], batch["y"])

  def before_round(i):
    put_batch(i)
    if progress is not None and i:
      progress(len(txs))

  losses, seconds = timing.interleaved(
      {name: contestant(name) for name in txs}, steps, wait=jax.block_until_ready,
      before_round=before_round,
  )
  if progress is not None:
    progress(len(txs))
  x_all, y_all, x_test, y_test = map(jnp.asarray, (x_tr, y_tr, x_te, y_te))
  results = []
  for name in txs:
    model = models[name]
    final_loss = float(_loss(model, x_all, y_all))
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    results.append(RunResult(name, np.asarray(jnp.stack(losses[name])), final_loss, accuracy,
                             compile_seconds[name], timing.summarize(seconds[name])))
  return results


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


def run(
    out: str,
    steps: int = 600,
    learning_rate: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[list[RunResult], pathlib.Path]:
  """Runs the whole demo: trains the optimizers interleaved (`train_all`), writes the PNG.

  Args:
    out: path of the PNG; a directory, or a path without a suffix, gets
      ``optax_nadam_demo.png`` inside.
    steps: optimizer steps per run.
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
  # one-step run, so that the optimizer compiled first is not charged for them in the table.
  jax.block_until_ready(jax.numpy.zeros(()))
  train_all({"warm-up": optax.sgd(0.0)}, data, 1, batch_size, seed, warmup=0)
  with tqdm(total=steps * len(txs), disable=not show_progress, unit="step") as bar:
    results = train_all(txs, data, steps, batch_size, seed, progress=bar.update)
  plot(results, path)
  return results, path.resolve()
