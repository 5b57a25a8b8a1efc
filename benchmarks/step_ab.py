"""Step time of this checkout's `nadam` against the package at another git revision.

    python -m benchmarks.step_ab [--rev c7590d2] [--rounds 24] [--copies 4] [--only 1M]

Both versions are imported into one process (the other revision's package is
read with ``git archive`` into a temporary directory and renamed). Each regime
compiles jitted, donated ``update`` + ``apply_updates`` steps: two of the other
revision (the second is the A/A control), two of this checkout and one of
`optax.adam` (separate compiles of the same code differ by up to 4% here),
and allocates ``--copies`` buffer sets (params, grads and state), each after a
random-sized allocation so that the sets land at different offsets. The
buffers' placement alone moves a step's time by up to +-15% on the 2-core
machine here, more than the differences measured, so every
contestant steps on every set (the state's leaves are handed from one
contestant to the next; donation keeps them in place): per set and round,
each contestant takes 3 steps, in a random order. A ratio is the median over
all paired samples (same set, same round: same placement, adjacent in time, so
the machine's drift cancels too). The claim ``this / rev`` is the geometric
mean of the four executable pairs' ratios; ``A/A`` and ``this 2 / this`` (same
code, another executable) are the noise it is read against.
"""

import argparse
import importlib
import math
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
    "10 x 1M float16": [((1_000_000,), jnp.float16)] * 10,
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


def _compiled(tx, leaves):
  """``(step, treedef of the state)``: tx's jitted, donated update + apply_updates."""
  params = [jnp.ones(shape, dtype) for shape, dtype in leaves]

  def step(p, state, g):
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state

  state = tx.init(params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  return compiled, jax.tree.structure(state)


def _moments(state, n):
  """``(count, mu_product or None, m, v)`` of a nadam or optax.adam state's leaves."""
  leaves = jax.tree.leaves(state)
  if len(leaves) == 2 + 2 * n:  # nadam: count, mu_product, m..., v...
    return leaves[0], leaves[1], leaves[2:2 + n], leaves[2 + n:]
  return leaves[0], None, leaves[1:1 + n], leaves[1 + n:]  # adam: count, mu..., nu...


def _state(treedef, moments, n):
  """`moments` as the state of the contestant whose state has `treedef`."""
  count, mu_product, m, v = moments
  if treedef.num_leaves == 2 + 2 * n:
    return jax.tree.unflatten(treedef, [count, mu_product, *m, *v])
  return jax.tree.unflatten(treedef, [count, *m, *v])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rev", default="c7590d2", help="the other revision (default: before "
                      "issue 18's numerics)")
  parser.add_argument("--rounds", type=int, default=24)
  parser.add_argument("--copies", type=int, default=4)
  parser.add_argument("--only", default="", help="run the regimes whose name contains this")
  args = parser.parse_args()
  import optax_nadam

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    other = _import_revision(args.rev, pathlib.Path(tmp))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}; "
          f"{args.copies} buffer sets x {args.rounds} rounds x 3 steps")
    # Two executables of each nadam (compiled separately: an executable's own speed
    # differs by up to 4% from a second compile of the same code here).
    txs = {args.rev: lambda: other.nadam(1e-3), "this": lambda: optax_nadam.nadam(1e-3),
           "A/A": lambda: other.nadam(1e-3), "this 2": lambda: optax_nadam.nadam(1e-3),
           "optax.adam": lambda: optax.adam(1e-3)}
    for name, leaves in REGIMES.items():
      if args.only not in name:
        continue
      n = len(leaves)
      steps = {k: _compiled(make(), leaves) for k, make in txs.items()}
      # Buffer sets, each at its own offsets (a random-sized allocation before each):
      # every contestant steps on every set, so placement is the same for all of them.
      sets, pads = [], []
      nadam_state = optax_nadam.nadam(1e-3).init([jnp.ones(s, d) for s, d in leaves])
      for _ in range(args.copies):
        pads.append(jnp.zeros(int(rng.integers(1, 300_000)), jnp.float32))
        params = [jnp.ones(shape, dtype) for shape, dtype in leaves]
        grads = [jnp.full(shape, 0.01, dtype) for shape, dtype in leaves]
        moments = _moments(jax.tree.map(jnp.copy, nadam_state), n)
        sets.append([params, moments, grads])
      for step, treedef in steps.values():  # warm-up: one step of each on each set
        for buffers in sets:
          p, state = step(buffers[0], _state(treedef, buffers[1], n), buffers[2])
          count, mu_product, m, v = _moments(state, n)
          buffers[0], buffers[1] = p, (count, buffers[1][1] if mu_product is None
                                       else mu_product, m, v)
      times = {k: [[] for _ in sets] for k in txs}
      names = list(txs)
      for _ in range(args.rounds):
        for c, buffers in enumerate(sets):
          # A random order per set and round: no contestant always follows the
          # same one (the step before leaves the caches its way).
          for k in rng.permutation(names):
            step, treedef = steps[k]
            t0 = time.perf_counter()
            for _ in range(3):
              p, state = step(buffers[0], _state(treedef, buffers[1], n), buffers[2])
              count, mu_product, m, v = _moments(state, n)
              buffers[0], buffers[1] = p, (count, buffers[1][1] if mu_product is None
                                           else mu_product, m, v)
            jax.block_until_ready(buffers[0])
            times[k][c].append((time.perf_counter() - t0) / 3 * 1e3)
      # Paired samples: the same buffer set in the same round (adjacent in time), so
      # placement and slow drift of the machine cancel; the median over all pairs, and
      # each set's median to show the spread.
      t = {k: np.array(v) for k, v in times.items()}  # [set, round]
      ratio = lambda a, b, t=t: float(np.median(t[a] / t[b]))  # noqa: E731
      spread = lambda a, b, t=t: "/".join(  # noqa: E731
          f"{x:.3f}" for x in sorted(np.median(t[a] / t[b], axis=1)))
      med = {k: np.median(v) for k, v in t.items()}
      claim = math.exp(np.mean([math.log(ratio(a, b)) for a in ("this", "this 2")
                                for b in (args.rev, "A/A")]))
      print(f"{name}: {args.rev} {float(med[args.rev]):.2f} ms; this / {args.rev} "
            f"{claim:.3f} (the 4 executable pairs: {ratio('this', args.rev):.3f}, "
            f"{ratio('this', 'A/A'):.3f}, {ratio('this 2', args.rev):.3f}, "
            f"{ratio('this 2', 'A/A'):.3f}; per set {spread('this', args.rev)}); A/A "
            f"{ratio('A/A', args.rev):.3f}, this 2 / this {ratio('this 2', 'this'):.3f}; "
            f"this / adam {ratio('this', 'optax.adam'):.2f}, {args.rev} / adam "
            f"{ratio(args.rev, 'optax.adam'):.2f}", flush=True)

if __name__ == "__main__":
  main()
