"""Cost of the numerical guards in `scale_by_nadam` (v saturation, 0/0 -> 0).

Compares `optax_nadam/transform.py` as of c7b7e0a (the guards in their current
form: v saturated with a compare + select; 9ffd41d added them with
`jnp.minimum`, which XLA:CPU fused badly) with the file before any guard
(a16bcc7), both read from git so later changes to transform.py do not blur the
comparison. Each regime times a jitted ``update`` + ``apply_updates`` step of
both versions interleaved in the same process (`optax_nadam._timing`, the
protocol the demo uses too) and prints the medians and their ratio (guarded / unguarded).
``eps=0`` exercises the extra ``where(denom == 0, 0, step)``.

Run (from the repo root):

  python benchmarks/guard_cost.py [--reps 25]
"""

import argparse
import importlib.util
import pathlib
import platform
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _timing as timing

GUARDED, UNGUARDED = "c7b7e0a", "a16bcc7"
REGIMES = {
    "10 x 1M": [(1_000_000,)] * 10,
    "1000 x 10k": [(10_000,)] * 1000,
    "2000 x 100": [(100,)] * 2000,
}
VARIANTS = [(1e-7, jnp.float32), (0.0, jnp.float32), (1e-7, jnp.bfloat16)]


def _load(rev: str, tmp: pathlib.Path):
  """Imports optax_nadam/transform.py as of `rev` under a private module name."""
  root = pathlib.Path(__file__).resolve().parents[1]
  source = subprocess.run(
      ["git", "show", f"{rev}:optax_nadam/transform.py"], cwd=root, check=True,
      capture_output=True, text=True).stdout
  path = tmp / f"transform_{rev}.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location(f"transform_{rev}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _step_fn(module, shapes, eps, dtype):
  tx = optax.chain(module.scale_by_nadam(eps=eps), optax.scale(-1e-3))
  keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
  params = [jax.random.normal(k, s).astype(dtype) for k, s in zip(keys, shapes)]
  grads = [0.01 * p for p in params]

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  jax.block_until_ready(step(params, state, grads))  # compile
  return lambda: step(params, state, grads)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=25)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    versions = {"unguarded": _load(UNGUARDED, pathlib.Path(tmp)),
                "guarded": _load(GUARDED, pathlib.Path(tmp))}
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.machine()}, "
        f"python {sys.version.split()[0]}; median of {args.reps} interleaved steps")
  print(f"{'regime':11s} {'eps':>5s} {'dtype':8s} {'unguarded':>10s} {'guarded':>10s} ratio")
  ratios = []
  for name, shapes in REGIMES.items():
    for eps, dtype in VARIANTS:
      runs = {k: _step_fn(m, shapes, eps, dtype) for k, m in versions.items()}
      _, times = timing.interleaved({k: (lambda r, run=run: run()) for k, run in runs.items()},
                                    args.reps, wait=jax.block_until_ready)
      base = float(np.median(times["unguarded"])) * 1e3
      guarded = float(np.median(times["guarded"])) * 1e3
      ratios.append(guarded / base)
      print(f"{name:11s} {eps:5g} {jnp.dtype(dtype).name:8s} {base:8.2f}ms {guarded:8.2f}ms "
            f"{guarded / base:.3f}")
  print(f"median ratio over regimes: {np.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
  main()
