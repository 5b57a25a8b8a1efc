"""Step time of this checkout's `nadam` against the package at another git revision.

    python -m benchmarks.step_ab [--rev c7590d2] [--rounds 13]

Both versions are imported into one process (the other revision's package is
read with ``git archive`` into a temporary directory and renamed), and each
regime times a jitted, donated ``update`` + ``apply_updates`` step of both and of
`optax.adam`, interleaved in rotating order, 3 steps per sample: the medians
and their ratios. One process and interleaving keep the machine's noise (a
shared 2-core machine) out of the ratio, which `benchmarks.run`'s separate
runs cannot.
"""

import argparse
import importlib
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

REGIMES = {
    "10 x 1M float32": [((1_000_000,), jnp.float32)] * 10,
    "10 x 1M bfloat16": [((1_000_000,), jnp.bfloat16)] * 10,
    "transformer-like float32": ([((512, 2048), jnp.float32), ((2048, 512), jnp.float32),
                                  ((512, 512), jnp.float32)] * 4 + [((512,), jnp.float32)] * 16),
}


def _import_revision(rev: str, tmp: pathlib.Path):
  """The package `optax_nadam` at `rev`, imported as `optax_nadam_at_rev`."""
  root = pathlib.Path(__file__).resolve().parents[1]
  archive = subprocess.run(["git", "-C", str(root), "archive", rev, "optax_nadam"],
                           check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
  package = tmp / "optax_nadam_at_rev"
  (tmp / "optax_nadam").rename(package)
  for path in package.rglob("*.py"):
    path.write_text(re.sub(r"\boptax_nadam\b", "optax_nadam_at_rev", path.read_text()))
  sys.path.insert(0, str(tmp))
  return importlib.import_module("optax_nadam_at_rev")


def _stepper(tx, leaves):
  params = [jnp.ones(s, d) for s, d in leaves]
  grads = [jnp.full(s, 0.01, d) for s, d in leaves]

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  step = jax.jit(step, donate_argnums=(0, 1))
  p, s = step(params, tx.init(params), grads)
  jax.block_until_ready(p)
  return [p, s, grads, step]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rev", default="c7590d2", help="the other revision (default: before "
                      "issue 18's numerics)")
  parser.add_argument("--rounds", type=int, default=13)
  args = parser.parse_args()
  import optax_nadam

  with tempfile.TemporaryDirectory() as tmp:
    other = _import_revision(args.rev, pathlib.Path(tmp))
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, jax "
          f"{jax.__version__}, optax {optax.__version__}; {args.rounds} rounds x 3 steps")
    txs = {args.rev: lambda: other.nadam(1e-3), "this checkout": lambda: optax_nadam.nadam(1e-3),
           "optax.adam": lambda: optax.adam(1e-3)}
    for name, leaves in REGIMES.items():
      runs = {k: _stepper(make(), leaves) for k, make in txs.items()}
      times = {k: [] for k in txs}
      order = list(txs)
      for _ in range(args.rounds):
        order = order[1:] + order[:1]
        for k in order:
          run = runs[k]
          t0 = time.perf_counter()
          for _ in range(3):
            run[0], run[1] = run[3](run[0], run[1], run[2])
          jax.block_until_ready(run[0])
          times[k].append((time.perf_counter() - t0) / 3 * 1e3)
      med = {k: float(np.median(v)) for k, v in times.items()}
      print(f"{name}: " + ", ".join(f"{k} {med[k]:.2f} ms [{min(times[k]):.2f}-"
                                    f"{max(times[k]):.2f}]" for k in txs)
            + f"; this / {args.rev} {med['this checkout'] / med[args.rev]:.3f}, "
            f"{args.rev} / adam {med[args.rev] / med['optax.adam']:.2f}, this / adam "
            f"{med['this checkout'] / med['optax.adam']:.2f}", flush=True)


if __name__ == "__main__":
  main()
