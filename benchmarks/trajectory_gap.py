"""How far each peer's trajectory is from ours, over several problems.

    python -m benchmarks.trajectory_gap [--steps 20 200] [--lr 1e-2] [--seeds 1 ... 12]

Feeds a fixed gradient sequence (mixed leaf shapes, `tests/helpers/reference.py::
peers_md_problem`, one per seed) to ours and to each peer, and prints, after
each step count, the distance of the peer's params from ours as a fraction of
how far ours moved: ||p_peer - p_ours|| / ||p_ours - p_0||, as the median over
the seeds and its range [min-max]. Peers at fp32 rounding print ~1e-6; a
different algorithm prints a visible fraction. Needs the `test` extra (the
peers).
"""

import argparse
import os
from typing import Dict, Sequence

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_nadam  # noqa: E402
from tests.helpers import reference as ref  # noqa: E402


def _flat(step):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in step])


def gaps(steps: Sequence[int], lr: float, seed: int) -> Dict[int, Dict[str, float]]:
  """Relative distance from our trajectory for every peer, on one problem.

  Args:
    steps: step counts at which to measure; one run of `max(steps)` steps
      serves them all (the first k steps of a problem are its k-step problem).
    lr: learning rate shared by every optimizer.
    seed: seed of the problem (`peers_md_problem`).

  Returns:
    A dict step count -> (name -> ||p_peer - p_ours|| / ||p_ours - p_0||).
  """
  hp = dict(lr=lr, b1=0.9, b2=0.999, eps=1e-7)
  params, grads = ref.peers_md_problem(max(steps), seed)
  ours = ref.run_ours(optax_nadam.nadam(lr), params, grads)
  runs = {
      "torch.optim.NAdam (eps=1e-7)": ref.run_torch(
          params, grads, momentum_decay=0.004, **hp),
      "tf_keras legacy Nadam": ref.run_tf_legacy(
          params, grads, momentum_decay=0.004, **hp),
      "keras 3 Nadam": ref.run_keras3(params, grads, **hp),
      "optax_nadam.nadam(momentum_decay=1.0)": ref.run_ours(
          optax_nadam.nadam(lr, momentum_decay=1.0), params, grads),
      "optax.nadam": ref.run_ours(optax.nadam(lr, eps=1e-7), params, grads),
      "optax.adam": ref.run_ours(optax.adam(lr, eps=1e-7), params, grads),
  }
  table = {}
  for s in steps:
    moved = np.linalg.norm(_flat(ours[s - 1]) - _flat(params))
    table[s] = {k: np.linalg.norm(_flat(v[s - 1]) - _flat(ours[s - 1])) / moved
                for k, v in runs.items()}
  return table


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[20, 200])
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 13)))
  args = parser.parse_args()
  per_seed = [gaps(args.steps, args.lr, seed) for seed in args.seeds]
  names = list(per_seed[0][args.steps[0]])
  print(f"median [min-max] over {len(args.seeds)} problems (seeds "
        f"{' '.join(map(str, args.seeds))}), lr {args.lr}:")
  print("| optimizer | " + " | ".join(f"after {s} steps" for s in args.steps) + " |")
  print("|---|" + "---|" * len(args.steps))
  for name in names:
    cells = []
    for s in args.steps:
      values = np.array([table[s][name] for table in per_seed])
      cells.append(f"{np.median(values):.2e} [{values.min():.2e}-{values.max():.2e}]")
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
