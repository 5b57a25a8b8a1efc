"""Step time of this checkout's `nadam` against the package at another git revision.

    python -m benchmarks.step_ab [--rev c7590d2] [--rounds 21] [--copies 3]

Both versions are imported into one process (the other revision's package is
read with ``git archive`` into a temporary directory and renamed). Each regime
builds ``--copies`` independent jitted, donated ``update`` + ``apply_updates``
steps of the other revision, of this checkout, of the other revision again
(the A/A control) and of `optax.adam`, with a random-sized allocation before
each so that their buffers land at different offsets (the buffers' placement
alone moved one copy's time by up to 6% here). All copies are timed
interleaved in rotating order, 3 steps per sample; a contestant's time is the
median over its copies' samples. The ratio ``this / rev`` is the claim; ``A/A``
(the other revision against itself, built the same way) is the noise it is
read against. One process and interleaving keep the machine's load (a shared
2-core machine) out of the ratios, which `benchmarks.run`'s separate runs
cannot.
"""

import argparse
import importlib
import os
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
    # In L2 (2 x 2 MiB here): the arithmetic alone, free of the buffers' placement.
    "10 x 16k float32 (in cache)": [((16_384,), jnp.float32)] * 10,
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
  parser.add_argument("--rounds", type=int, default=21)
  parser.add_argument("--copies", type=int, default=3)
  args = parser.parse_args()
  import optax_nadam

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    other = _import_revision(args.rev, pathlib.Path(tmp))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}; "
          f"{args.copies} copies x {args.rounds} rounds x 3 steps")
    txs = {args.rev: lambda: other.nadam(1e-3), "this": lambda: optax_nadam.nadam(1e-3),
           "A/A": lambda: other.nadam(1e-3), "optax.adam": lambda: optax.adam(1e-3)}
    for name, leaves in REGIMES.items():
      runs, pads = {}, []
      for copy in range(args.copies):
        for k, make in txs.items():
          pads.append(jnp.zeros(int(rng.integers(1, 300_000)), jnp.float32))
          runs[k, copy] = _stepper(make(), leaves)
      times = {key: [] for key in runs}
      order = list(runs)
      for _ in range(args.rounds):
        order = order[1:] + order[:1]
        for key in order:
          run = runs[key]
          t0 = time.perf_counter()
          for _ in range(3):
            run[0], run[1] = run[3](run[0], run[1], run[2])
          jax.block_until_ready(run[0])
          times[key].append((time.perf_counter() - t0) / 3 * 1e3)
      med = {k: float(np.median([t for c in range(args.copies) for t in times[k, c]]))
             for k in txs}
      copies = {k: "/".join(f"{np.median(times[k, c]) / med[args.rev]:.2f}"
                            for c in range(args.copies)) for k in txs}
      print(f"{name}: {args.rev} {med[args.rev]:.2f} ms; this / {args.rev} "
            f"{med['this'] / med[args.rev]:.3f} (copies {copies['this']}); A/A "
            f"{med['A/A'] / med[args.rev]:.3f} (copies {copies['A/A']}); this / adam "
            f"{med['this'] / med['optax.adam']:.2f}, {args.rev} / adam "
            f"{med[args.rev] / med['optax.adam']:.2f}", flush=True)


if __name__ == "__main__":
  main()
