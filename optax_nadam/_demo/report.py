"""The demo's output: its table, its timing note, its loss-curve plot and where it goes."""

import pathlib

import numpy as np

# The plot's file name inside a directory given as --out (or the temporary one).
PNG_NAME = "optax_nadam_demo.png"

# How the table's times were taken (`train.train_all` with `timing.interleaved`).
PROTOCOL = (
    "Times: each optimizer's step is compiled (one sample each, in list order, after a throwaway "
    "warm-up compile) and warmed up first; then round by round each takes one step, in an order "
    "that changes every round (each optimizer first in 1/{n} of the rounds); median and "
    "10th-90th percentile of {rounds} steps each, every step timed until its loss is ready."
)


def format_table(results: list) -> str:
  """A plain-text (Markdown) table of the results.

  Args:
    results: the runs (`train.RunResult`s).

  Returns:
    The table as a string; step times in microseconds.
  """
  lines = [
      "| optimizer | final train loss | test accuracy | compile (s) | step median (us) "
      "| step p10-p90 (us) |",
      "|---|---|---|---|---|---|",
  ]
  for r in results:
    t = r.step_times
    lines.append(
        f"| {r.name} | {r.final_loss:.4f} | {100 * r.test_accuracy:.2f}% "
        f"| {r.compile_seconds:.2f} | {1e6 * t.median:.0f} | {1e6 * t.p10:.0f}-{1e6 * t.p90:.0f} |"
    )
  return "\n".join(lines)


def plot(results: list, path: pathlib.Path, title: str = "") -> pathlib.Path:
  """Writes the training-loss curves (log scale, 20-step moving average) to a PNG.

  Args:
    results: the runs (`train.RunResult`s).
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
    path = path / PNG_NAME
  return path


def image_formats() -> set[str]:
  """File suffixes (without the dot) that matplotlib can write `plot`'s figure to.

  Returns:
    e.g. ``{"png", "pdf", "svg", ...}``.
  """
  from matplotlib.figure import Figure

  return set(Figure().canvas.get_supported_filetypes())


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
