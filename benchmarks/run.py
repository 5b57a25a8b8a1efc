"""Step time, compile time, retraces and state memory of NAdam against every peer.

    python -m benchmarks.run [--quick] [--out DIR] [--regimes a c ...]

Needs the `bench` extra (torch 2.13.0 CPU, Keras 3, matplotlib). Each contestant
is one optimizer step that reads params, grads and optimizer state and writes
new params and state:

- jax contestants: ``jax.jit(update + optax.apply_updates)`` with params and
  state donated; Keras 3 ``Nadam`` through ``jax.jit(opt.stateless_apply)``
  with its variables donated (``KERAS_BACKEND=jax``);
- torch: ``opt.step()`` with ``.grad`` set, NAdam with ``foreach=True`` and
  ``foreach=False`` (single tensor), and ``Adam(fused=True)``, the fastest CPU
  step torch has; ``torch.set_num_threads(os.cpu_count())``;
- the streaming bound: one jitted, donated elementwise pass over a
  params-sized flat buffer (reads 1, writes 1), scaled by 7/2 to the 7 buffers
  an Adam-family step must move (reads p, g, m, v; writes p, m, v).

Rounds are interleaved (every contestant once per round, in the balanced orders
of `optax_nadam._timing`, the protocol the demo uses too) so machine noise hits all
alike; a sample is the mean of a few consecutive steps, and the tables show
the median over rounds and the spread (min-max).
Prints markdown tables, the issue's targets with the measured ratios, and
writes ``bench.png`` and ``bench.json`` to ``--out``.
"""

import argparse
import gc
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_nadam  # noqa: E402
from benchmarks._contestants import CONTESTANTS, JAX_TXS, LR, REGIMES, make, problem, step_fn  # noqa: E402
from optax_nadam import _timing as timing  # noqa: E402

# --quick: compiling a step over 2000 leaves takes 14-24 s per jax contestant and
# 44 s for Keras 3 on 2 cores, so quick mode skips (b) and times (c) and (d)
# with the contestants the targets need (None: all of them).
QUICK = {
    "a": None,
    "a16": None,
    "c": ["optax_nadam.nadam", "optax_nadam.grouped(nadam)", "optax.adam",
          "torch NAdam foreach", "torch Adam fused", "streaming bound"],
    "d": ["optax_nadam.nadam", "optax.adam", "torch NAdam foreach", "torch Adam fused",
          "streaming bound"],
}


def time_regime(key, rounds, target_s, contestants):
  """Median, min and max seconds per step for every contestant on one regime.

  Args:
    key: a key of `REGIMES`.
    rounds: interleaved rounds (samples per contestant).
    target_s: a sample runs about this long (whole steps, 1 to 50).
    contestants: names from `CONTESTANTS`.

  Returns:
    name -> {"median", "min", "max"} seconds per step, or {"error": text}.
  """
  _, shapes, dtype = REGIMES[key]
  params, grads = problem(shapes, dtype)
  runs, steps, out, setup = {}, {}, {}, {}
  for name in contestants:
    try:
      t0 = time.perf_counter()
      run = make(name, params, grads, dtype)
      run(2)  # compile, first steps
      setup[name] = time.perf_counter() - t0
      t0 = time.perf_counter()
      run(2)
      per_step = (time.perf_counter() - t0) / 2
      runs[name], steps[name] = run, int(np.clip(round(target_s / per_step), 1, 50))
    except Exception as e:  # a peer that cannot run this regime: reported, not fatal
      out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
  # One sample: steps[name] consecutive steps; contestants in the demo's balanced orders.
  _, seconds = timing.interleaved(
      {name: (lambda r, run=run, k=steps[name]: run(k)) for name, run in runs.items()}, rounds)
  for name, total in seconds.items():
    xs = total / steps[name]
    scale = 3.5 if name == "streaming bound" else 1.0
    out[name] = {"median": scale * float(np.median(xs)), "min": scale * float(np.min(xs)),
                 "max": scale * float(np.max(xs))}
  del runs
  gc.collect()
  print("    set-up + first 2 steps (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()), flush=True)
  return out


def compile_times(reps, quick=False):
  """Median seconds to trace + compile one step: ours and optax.adam at 1000 leaves (b).

  Without `quick` also ours, grouped and optax.adam at 2000 small leaves (c),
  where grouping applies. Keys are "name @ regime key".
  """
  jobs = [("optax_nadam.nadam", "b"), ("optax.adam", "b")]
  if not quick:
    jobs += [("optax_nadam.nadam", "c"), ("optax_nadam.grouped(nadam)", "c"), ("optax.adam", "c")]
  out = {}
  for name, key in jobs:
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in REGIMES[key][1]]
    times = []
    for _ in range(reps):
      tx = JAX_TXS[name]()
      state = jax.eval_shape(tx.init, params)
      t0 = time.perf_counter()
      jax.jit(step_fn(tx)).lower(params, state, params).compile()
      times.append(time.perf_counter() - t0)
    out[f"{name} @ {key}"] = float(np.median(times))
  return out


def retraces(steps=10):
  """Traces of a jitted step over `steps` calls with new values each time."""
  out = {}
  for name in ["optax_nadam.nadam", "optax_nadam.grouped(nadam)", "optax.adam"]:
    tx, traces = JAX_TXS[name](), [0]
    inner = step_fn(tx)

    def step(p, s, g, inner=inner, traces=traces):
      traces[0] += 1
      return inner(p, s, g)

    fn = jax.jit(step)
    p = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3), "c": jnp.zeros(2)}
    s = tx.init(p)
    for i in range(steps):
      p, s = fn(p, s, jax.tree.map(lambda x, i=i: x * 0 + 0.1 * (i + 1), p))
    out[name] = traces[0]
  return out


def state_bytes():
  """Optimizer-state bytes per parameter byte on regime (d)."""
  params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in REGIMES["d"][1]]
  p_bytes = sum(x.size * x.dtype.itemsize for x in params)
  txs = {
      "optax_nadam.nadam": optax_nadam.nadam(LR),
      "optax_nadam.nadam(mu_dtype=bfloat16)": optax_nadam.nadam(LR, mu_dtype=jnp.bfloat16),
      "optax_nadam.grouped(nadam)": optax_nadam.grouped(optax_nadam.nadam(LR)),
      "optax.adam": optax.adam(LR),
  }
  out = {}
  for name, tx in txs.items():
    state = jax.eval_shape(tx.init, params)
    s_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    out[name] = {"ratio": s_bytes / p_bytes, "state_bytes": s_bytes, "param_bytes": p_bytes}
  return out


def machine():
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import keras
  import torch
  return (f"{os.cpu_count()} CPU cores ({cpu}), {jax.devices()[0].platform}, "
          f"jax {jax.__version__}, optax {optax.__version__}, torch {torch.__version__}, "
          f"keras {keras.__version__}, python {sys.version.split()[0]}")


def _ms(x):
  return f"{1e3 * x:.2f}" if x < 10 else f"{1e3 * x:.1f}"


def tables(results):
  """Markdown: time per step (median [min-max] ms) and ratios to optax.adam."""
  lines = ["| contestant | " + " | ".join(REGIMES[k][0] for k in results) + " |",
           "|---|" + "---|" * len(results)]
  for name in CONTESTANTS:
    cells = []
    for k in results:
      r = results[k].get(name)
      if r is None:
        cells.append("-")
      elif "error" in r:
        cells.append("n/a")
      else:
        cells.append(f"{_ms(r['median'])} [{_ms(r['min'])}-{_ms(r['max'])}]")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Ratio to optax.adam (median / median; lower is faster):", "",
            "| contestant | " + " | ".join(REGIMES[k][0] for k in results) + " |",
            "|---|" + "---|" * len(results)]
  for name in CONTESTANTS:
    cells = []
    for k in results:
      r, base = results[k].get(name), results[k].get("optax.adam")
      ok = r and "median" in r and base and "median" in base
      cells.append(f"{r['median'] / base['median']:.2f}" if ok else "-")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def targets(results, compiled, traces, memory):
  """The issue's targets: (description, measured, met) rows."""
  def med(k, name):
    r = results.get(k, {}).get(name, {})
    return r.get("median")

  rows = []

  def ratio_row(text, k, a, b, limit, faster=False):
    x, y = med(k, a), med(k, b)
    if x is None or y is None:
      return
    value = y / x if faster else x / y
    rows.append((text, f"{value:.2f}x", value >= limit if faster else value <= limit))

  ours, grp = "optax_nadam.nadam", "optax_nadam.grouped(nadam)"
  ratio_row("(a) ours / optax.adam <= 1.05", "a", ours, "optax.adam", 1.05)
  if med("a", ours) and med("a16", ours):
    r = med("a16", ours) / med("a", ours)
    rows.append(("(a) bf16 / f32 of ours <= 1", f"{r:.2f}x", r <= 1.0))
  ratio_row("(c) grouped / optax.adam <= 0.5", "c", grp, "optax.adam", 0.5)
  ratio_row("(c) plain ours / optax.adam (for reference)", "c", ours, "optax.adam", 99)
  for k, limit in [("a", 2.0), ("b", 2.0), ("d", 2.0), ("c", 2.5)]:
    best = grp if k == "c" else ours
    for peer in ["torch NAdam foreach", "keras 3 Nadam (jit)"]:
      ratio_row(f"({k}) {peer} / {'grouped' if k == 'c' else 'ours'} >= {limit}", k, best, peer,
                limit, faster=True)
  ratio_row("(a) ours / torch Adam fused <= 1 (stretch)", "a", ours, "torch Adam fused", 1.0)
  ratio_row("(a) ours / streaming bound (for reference)", "a", ours, "streaming bound", 99)
  c = compiled[f"{ours} @ b"] / compiled["optax.adam @ b"]
  rows.append(("compile at 1000 leaves, ours / optax.adam <= 1.2", f"{c:.2f}x", c <= 1.2))
  rows.append(("traces over 10 steps == 1", str(traces[ours]), traces[ours] == 1))
  m = memory[ours]["ratio"]
  rows.append(("state bytes / param bytes == 2 (+ scalars)", f"{m:.6f}", abs(m - 2) < 1e-3))
  m16 = memory["optax_nadam.nadam(mu_dtype=bfloat16)"]["ratio"]
  rows.append(("same with mu_dtype=bfloat16 == 1.5", f"{m16:.6f}", abs(m16 - 1.5) < 1e-3))
  return rows


def plot(results, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = list(results)
  names = [n for n in CONTESTANTS if any("median" in results[k].get(n, {}) for k in keys)]
  fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    xs = np.arange(len(keys)) + (i - len(names) / 2 + 0.5) * width
    ms = [1e3 * results[k].get(name, {}).get("median", np.nan) for k in keys]
    rel = [results[k].get(name, {}).get("median", np.nan)
           / results[k]["optax.adam"]["median"] for k in keys]
    axes[0].bar(xs, ms, width, label=name)
    axes[1].bar(xs, rel, width, label=name)
  for ax, title in [(axes[0], "ms per step (median, log scale)"),
                    (axes[1], "time / optax.adam's (log scale)")]:
    ax.set_xticks(np.arange(len(keys)), [REGIMES[k][0] for k in keys], rotation=15)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
  axes[1].axhline(1.0, color="k", lw=0.8)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer rounds: under 2 minutes")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
  parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
  parser.add_argument("--out", default="out/bench", help="directory for bench.png, bench.json")
  args = parser.parse_args()
  rounds = args.rounds or (3 if args.quick else 15)
  target_s = 0.02 if args.quick else 0.05
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  print(f"machine: {machine()}", flush=True)
  results = {}
  regimes = args.regimes
  if args.quick and args.regimes == list(REGIMES):
    regimes = [k for k in regimes if k in QUICK]
  for key in regimes:
    contestants = list(CONTESTANTS)
    if key == "a16":  # single-tensor torch adds nothing to the dtype question
      contestants.remove("torch NAdam single")
    if args.quick and key in QUICK and QUICK[key] is not None:
      contestants = [c for c in contestants if c in QUICK[key]]
    results[key] = time_regime(key, rounds, target_s, contestants)
    print(f"  {REGIMES[key][0]} done ({time.perf_counter() - start:.0f} s)", flush=True)
  compiled = compile_times(1 if args.quick else 3, args.quick)
  traces = retraces()
  memory = state_bytes()
  print(f"\nTime per step, ms: median [min-max] over {rounds} interleaved rounds\n")
  print(tables(results))
  for k, res in results.items():
    for name, r in res.items():
      if "error" in r:
        print(f"  {REGIMES[k][0]}: {name} could not run: {r['error']}")
  print("\nCompile time of one step, median s (@ b: 1000 leaves; @ c: 2000 leaves): "
        + ", ".join(f"{k} {v:.2f}" for k, v in compiled.items()))
  print("Traces over 10 jitted steps: " + ", ".join(f"{k} {v}" for k, v in traces.items()))
  print("Optimizer state bytes / param bytes (regime d): "
        + ", ".join(f"{k} {v['ratio']:.6f}" for k, v in memory.items()))
  print("\n| target | measured | met |\n|---|---|---|")
  for text, value, met in targets(results, compiled, traces, memory):
    print(f"| {text} | {value} | {'yes' if met else 'NO'} |")
  plot(results, out / "bench.png")
  (out / "bench.json").write_text(json.dumps(
      {"machine": machine(), "rounds": rounds, "results": results, "compile_s": compiled,
       "traces": traces, "state_bytes": memory}, indent=1))
  print(f"\nwrote {out / 'bench.png'} and {out / 'bench.json'} "
        f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
  main()
