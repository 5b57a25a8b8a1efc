"""Damaged checkpoint files: what `params_from_keras` does with random bytes changed.

Builds a valid tf-keras-layout ``.h5`` and a Keras 3 ``.keras`` (the builders of
`tests/helpers/hostile.py`), then, per seed, changes 1-4 random bytes of a copy
(and cuts it short one time in five) and reads it, many times. Each seed runs in
its own process, because a damaged HDF5 file can crash HDF5 itself; a crash is
counted (with the try it happened at) and the seed stops there. Prints, per file
kind and seed: tries, files read (``ok``), refusals by exception class, other
exceptions, the slowest read, and whether the process crashed.

Run (from the repo root):

  python benchmarks/fuzz_files.py [--seeds 7] [--tries 400]
"""

import argparse
import collections
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def worker(kind: str, seed: int, tries: int, work: str) -> None:
  import random

  import jax.numpy as jnp

  from optax_nadam import interop
  from tests.helpers import hostile

  d = pathlib.Path(work)
  if kind == "h5":
    src = pathlib.Path(hostile.legacy_h5(d / "ok.h5", training_config=json.dumps(
        {"optimizer_config": {"class_name": "Nadam", "config": {"learning_rate": 0.01}}})))
  else:
    src = pathlib.Path(hostile.keras_zip(d / "ok.keras"))
  blob = src.read_bytes()
  like = [jnp.zeros(s, jnp.float32) for s in hostile.LIKE_SHAPES]
  rng = random.Random(seed)
  counts, slowest = collections.Counter(), 0.0
  for i in range(tries):
    b = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
      b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.2:
      b = b[:rng.randrange(len(b))]
    path = d / f"damaged{src.suffix}"
    path.write_bytes(bytes(b))
    t = time.perf_counter()
    try:
      interop.params_from_keras(path, like)
      counts["ok"] += 1
    except ValueError as e:
      counts[type(e).__name__] += 1
    except Exception as e:  # noqa: BLE001  (what this script looks for)
      counts[f"other {type(e).__name__}"] += 1
    slowest = max(slowest, time.perf_counter() - t)
    print("PROGRESS " + json.dumps(dict(tries=i + 1, slowest=round(slowest, 3), **counts)),
          flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, default=7)
  parser.add_argument("--tries", type=int, default=400)
  parser.add_argument("--worker", nargs=4)
  args = parser.parse_args()
  if args.worker:
    kind, seed, tries, work = args.worker
    worker(kind, int(seed), int(tries), work)
    return
  import h5py

  print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"h5py {h5py.__version__} / HDF5 {h5py.version.hdf5_version}")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  print("| file | seed | tries | read | refused | other | slowest s | crashed |")
  print("|---|---|---|---|---|---|---|---|")
  for kind in ("h5", "keras"):
    for seed in range(args.seeds):
      with tempfile.TemporaryDirectory() as work:
        p = subprocess.run([sys.executable, __file__, "--worker", kind, str(seed),
                            str(args.tries), work], cwd=REPO, env=env, capture_output=True,
                           text=True)
      lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROGRESS ")]
      last = json.loads(lines[-1][9:]) if lines else {"tries": 0, "slowest": 0}
      refused = {k: v for k, v in last.items() if k.endswith("Error") and "other" not in k}
      other = {k: v for k, v in last.items() if k.startswith("other")}
      crashed = f"signal {-p.returncode} at try {last['tries'] + 1}" if p.returncode < 0 else \
          ("exit %d" % p.returncode if p.returncode else "no")
      print(f"| {kind} | {seed} | {last['tries']} | {last.get('ok', 0)} | {refused} | "
            f"{other or '-'} | {last['slowest']} | {crashed} |")


if __name__ == "__main__":
  main()
