"""The command line of `python -m optax_nadam`: our NAdam, optax.nadam and optax.adam on Flax.

Needs the `demo` extra (``pip install "optax_nadam[demo]"``); runs offline in
well under a minute on two CPU cores. The plot goes to ``--out``, or without
it into a new temporary directory (``optax_nadam_demo-*``) whose path is
printed: never into the current directory unasked.
"""

import argparse
import math
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np

from optax_nadam._demo import report, train

# Bounds of the flags: beyond them a run fails inside training or never ends usefully.
MAX_STEPS = 20_000  # the batch indices of every step are drawn up front
MAX_SEED = 2**32 - 1  # scikit-learn's random_state range, used for the split
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m optax_nadam",
      description=(
          "Train a small Flax NNX MLP on scikit-learn's digits (offline) with "
          "optax_nadam.nadam, optax.nadam and optax.adam from the same initialisation; "
          "print final loss, test accuracy and time, and write a loss-curve PNG."
      ),
  )
  parser.add_argument("--steps", type=int, default=600,
                      help=f"optimizer steps per optimizer, 1 to {MAX_STEPS} (default: 600)")
  parser.add_argument("--out", default=None,
                      help="path of the loss-curve PNG, or a directory for it (default: "
                      f"{report.PNG_NAME} in a new temporary directory, printed at the end)")
  parser.add_argument("--lr", type=float, default=3e-3,
                      help="learning rate of every optimizer (default: 3e-3)")
  parser.add_argument("--batch-size", type=int, default=128,
                      help="examples per step, at most the training split's 1437 (default: 128)")
  parser.add_argument("--seed", type=int, default=0, help="seed of init, batches and split")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of the demo.

  Args:
    argv: command-line arguments (default: ``sys.argv[1:]``).

  Returns:
    The process exit status: 0 on success, 2 on bad arguments, an unwritable
    ``--out`` or a missing demo dependency.
  """
  parser = _parser()
  args = parser.parse_args(argv)
  if not 1 <= args.steps <= MAX_STEPS:
    parser.error(f"--steps must be 1 to {MAX_STEPS}, got {args.steps}")
  if args.batch_size < 1:
    parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
  # float32 is what the optimizers compute in: 1e39 would be inf there.
  if not (args.lr > 0 and math.isfinite(args.lr) and args.lr <= FLOAT32_MAX):
    parser.error(f"--lr must be > 0 and finite in float32 (<= {FLOAT32_MAX:.4g}), got {args.lr}")
  if not 0 <= args.seed <= MAX_SEED:
    parser.error(f"--seed must be 0 to {MAX_SEED} (scikit-learn's range), got {args.seed}")
  missing = train.missing_requirements()
  if missing:
    print(
        f"python -m optax_nadam: the demo needs {', '.join(missing)}, which "
        f"{'is' if len(missing) == 1 else 'are'} not installed. Install the demo extra:\n"
        '  pip install "optax_nadam[demo]"    (from a checkout: pip install ".[demo]")\n'
        f"or just the missing packages:\n  pip install {' '.join(missing)}",
        file=sys.stderr,
    )
    return 2
  n_train = train.train_size(args.seed)
  if args.batch_size > n_train:
    parser.error(f"--batch-size must be at most the {n_train} training examples, "
                 f"got {args.batch_size}")
  # No --out: a new directory of its own (printed at the end), not the current directory.
  out = args.out if args.out is not None else tempfile.mkdtemp(prefix="optax_nadam_demo-")
  png = report.png_path(out)
  formats = report.image_formats()
  if png.suffix.lower().lstrip(".") not in formats:
    parser.error(f"--out: matplotlib cannot write {png.suffix!r} files ({png}); use one of "
                 f"{', '.join('.' + f for f in sorted(formats))}, or a directory")
  # Before training, so that a bad --out fails in a second rather than after the runs.
  try:
    png.parent.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    parser.error(f"--out: cannot create the directory for {png}: {err}")
  try:
    existed = png.exists()
    with open(png, "ab"):
      pass
    if not existed:
      png.unlink()
  except OSError as err:
    parser.error(f"--out: cannot write {png}: {err}")
  results, path = train.run(
      steps=args.steps, out=out, learning_rate=args.lr, batch_size=args.batch_size,
      seed=args.seed, show_progress=not args.no_progress,
  )
  print()
  print(f"MLP 64-64-10 on scikit-learn digits, {args.steps} steps of batch "
        f"{args.batch_size}, learning rate {args.lr:g}, same init and batches:")
  print(report.format_table(results))
  print(report.PROTOCOL.format(n=len(results), rounds=args.steps))
  print(f"({report.machine()})")
  print(f"\nLoss curves written to {path}")
  return 0
