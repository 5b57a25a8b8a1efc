"""How far each peer's trajectory is from ours, on one problem.

    python -m benchmarks.trajectory_gap [--steps 20 200] [--lr 1e-2]

Feeds one fixed gradient sequence (mixed leaf shapes, seed 0) to ours and to
each peer, and prints, after each step count, the distance of the peer's params
from ours as a fraction of how far ours moved: ||p_peer - p_ours|| /
||p_ours - p_0||. Peers at fp32 rounding print ~1e-6; a different algorithm
prints a visible fraction. Needs the `test` extra (the peers).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_nadam  # noqa: E402
from tests import _reference as ref  # noqa: E402


def _flat(step):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in step])


def gaps(steps: int, lr: float) -> dict:
  """Relative distance from our trajectory for every peer after `steps` steps.

  Args:
    steps: number of optimizer steps.
    lr: learning rate shared by every optimizer.

  Returns:
    A dict name -> ||p_peer - p_ours|| / ||p_ours - p_0|| at the last step.
  """
  hp = dict(lr=lr, b1=0.9, b2=0.999, eps=1e-7)
  params, grads = ref.peers_md_problem(steps)
  ours = ref.run_ours(optax_nadam.nadam(lr), params, grads)[-1]
  runs = {
      "torch.optim.NAdam (eps=1e-7)": ref.run_torch(
          params, grads, momentum_decay=0.004, **hp)[-1],
      "tf_keras legacy Nadam": ref.run_tf_legacy(
          params, grads, momentum_decay=0.004, **hp)[-1],
      "keras 3 Nadam": ref.run_keras3(params, grads, **hp)[-1],
      "optax_nadam.nadam(momentum_decay=1.0)": ref.run_ours(
          optax_nadam.nadam(lr, momentum_decay=1.0), params, grads)[-1],
      "optax.nadam": ref.run_ours(optax.nadam(lr, eps=1e-7), params, grads)[-1],
      "optax.adam": ref.run_ours(optax.adam(lr, eps=1e-7), params, grads)[-1],
  }
  moved = np.linalg.norm(_flat(ours) - _flat(params))
  return {k: np.linalg.norm(_flat(v) - _flat(ours)) / moved for k, v in runs.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[20, 200])
  parser.add_argument("--lr", type=float, default=1e-2)
  args = parser.parse_args()
  table = {s: gaps(s, args.lr) for s in args.steps}
  names = list(next(iter(table.values())))
  print("| optimizer | " + " | ".join(f"after {s} steps" for s in args.steps) + " |")
  print("|---|" + "---|" * len(args.steps))
  for name in names:
    print(f"| {name} | " + " | ".join(f"{table[s][name]:.2e}" for s in args.steps) + " |")


if __name__ == "__main__":
  main()
