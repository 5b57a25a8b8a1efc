"""Step time of NAdam on a GPU against optax and torch, and against the copy bound.

    python -m benchmarks.gpu [--rounds 15] [--out DIR]

Run on a machine with one CUDA GPU and jax (CUDA), optax, chex and torch (CUDA)
installed; Keras is not needed. The contestants are those of
`benchmarks/run.py` that run on a GPU: the jax steps (``jax.jit(update +
optax.apply_updates)``, params and state donated), torch ``NAdam(foreach=True)``
and ``Adam(fused=True)`` on ``cuda``, and the streaming bound (one donated
elementwise pass over a params-sized buffer, scaled by 7/2 to the 7 buffers an
Adam-family step moves). Rounds are interleaved in the balanced orders of
`optax_nadam._timing` (the protocol the demo uses too); a sample is the mean of
several consecutive steps; the table shows the median over rounds and the
min-max spread. Prints a markdown table and writes ``gpu.json``.
"""

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._contestants import JAX_TXS, LR, REGIMES, make, problem
from optax_nadam import _timing as timing

TORCH = ("torch NAdam foreach (cuda)", "torch Adam fused (cuda)")


def _torch_cuda_step(kind, params, grads, dtype):
  import torch

  tdtype = torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32
  ps = [torch.tensor(np.asarray(x, np.float32), device="cuda").to(tdtype).requires_grad_()
        for x in params]
  for p, g in zip(ps, grads):
    p.grad = torch.tensor(np.asarray(g, np.float32), device="cuda").to(tdtype)
  if kind.startswith("torch NAdam"):
    opt = torch.optim.NAdam(ps, lr=LR, foreach=True)
  else:
    opt = torch.optim.Adam(ps, lr=LR, fused=True)

  def run(n):
    for _ in range(n):
      opt.step()
    torch.cuda.synchronize()

  return run


def time_regime(key, rounds, steps):
  """``{contestant: [seconds per step, one per round]}`` for one regime."""
  _, shapes, dtype = REGIMES[key]
  params, grads = problem(shapes, dtype)
  names = [n for n in JAX_TXS if not (key == "a16" and "grouped" in n)]
  runs = {n: make(n, params, grads, dtype) for n in names}
  runs["streaming bound"] = make("streaming bound", params, grads, dtype)
  for t in TORCH:
    runs[t] = _torch_cuda_step(t, params, grads, dtype)
  for run in runs.values():  # compile and warm up
    run(3)
  # One sample: `steps` consecutive steps; contestants in the demo's balanced orders.
  _, seconds = timing.interleaved({n: (lambda r, run=run: run(steps)) for n, run in runs.items()},
                                  rounds)
  samples = {n: list(s / steps) for n, s in seconds.items()}
  samples["streaming bound"] = [s * 3.5 for s in samples["streaming bound"]]
  return samples


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--steps", type=int, default=20, help="steps per sample")
  parser.add_argument("--regimes", nargs="+", default=["a", "a16", "b", "c", "d"],
                      choices=list(REGIMES))
  parser.add_argument("--out", default="out/gpu")
  args = parser.parse_args()
  import torch

  device = jax.devices()[0]
  machine = (f"{getattr(device, 'device_kind', device.platform)}, jax {jax.__version__}, "
             f"torch {torch.__version__}, {platform.machine()}")
  print(f"machine: {machine}")
  results = {}
  for key in args.regimes:
    samples = time_regime(key, args.rounds, args.steps)
    results[key] = {n: {"median_us": 1e6 * float(np.median(s)), "min_us": 1e6 * min(s),
                        "max_us": 1e6 * max(s)} for n, s in samples.items()}
    print(key, json.dumps({n: round(r["median_us"], 1) for n, r in results[key].items()}),
          flush=True)
  names = list(next(iter(results.values())))
  print("\n| contestant | " + " | ".join(REGIMES[k][0] for k in results) + " |")
  print("|---|" + "---|" * len(results))
  for n in names:
    cells = []
    for k in results:
      r = results[k].get(n)
      cells.append("-" if r is None else
                   f"{r['median_us']:.0f} ({r['min_us']:.0f}-{r['max_us']:.0f})")
    print(f"| {n} | " + " | ".join(cells) + " |")
  print("\nratios of medians (ours / peer):")
  for k in results:
    ours = results[k]["optax_nadam.nadam"]["median_us"]
    ratios = ", ".join(f"{n}: {ours / r['median_us']:.2f}x" for n, r in results[k].items()
                       if n != "optax_nadam.nadam")
    print(f"  {REGIMES[k][0]}: {ratios}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "gpu.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
  main()
