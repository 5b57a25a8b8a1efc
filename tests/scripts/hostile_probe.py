"""Reads hostile files (`tests/helpers/hostile.py`) and measures each refusal.

Usage: ``hostile_probe.py CORPUS_DIR CASE [CASE ...]``

Imports what the readers need (jax, optax_nadam.interop, h5py, torch; not
TensorFlow) first; that is the baseline. Then per case: resets the peak
resident memory (``/proc/self/clear_refs``), builds nothing (the test built the
files in CORPUS_DIR), calls the public reader and records the exception's class
and message, the time, the peak memory above the baseline (the peak resident
size after the call, ``VmHWM`` of /proc/self/status, minus the resident size
before it; ``ru_maxrss`` would also keep the peak of the process this one was
forked from), whether TensorFlow got imported, whether any
returned array holds the secret's bytes, and whether a pickle's command ran.
Each call runs under a 60 s alarm, so a reader that blocks (a FIFO) is reported,
not waited on forever. Prints ``RESULT {json}``: one record per case.
"""

import json
import os
import pathlib
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402, F401  (a baseline import: the torch reader needs it)

import optax_nadam  # noqa: E402
from optax_nadam import interop  # noqa: E402
from tests.helpers import hostile  # noqa: E402

ALARM_S = int(os.environ.get("HOSTILE_ALARM_S", "60"))
LIKE = [jnp.zeros(s, jnp.float32) for s in hostile.LIKE_SHAPES]
CALLS = {
    "params": lambda p: interop.params_from_keras(p, LIKE),
    "state": lambda p: interop.state_from_keras(
        p, optax_nadam.nadam(0.01, eps=1e-7, momentum_decay=1.0), LIKE),
    "config": lambda p: interop.optimizer_config_from_keras(p),
    "torch": lambda p: interop.params_from_torch(p, LIKE),
}


def _rss_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(field)


def _reset_peak() -> None:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak RSS (VmHWM, ru_maxrss) to the current RSS


class _Alarm(Exception):
  pass


def _on_alarm(signum, frame):
  raise _Alarm(f"still running after {ALARM_S} s")


def _holds_secret(out) -> bool:
  leaves = [out] if not isinstance(out, (list, tuple, dict)) else (
      list(out.values()) if isinstance(out, dict) else list(out))
  for leaf in leaves:
    try:
      if hostile.SECRET[:16] in np.asarray(leaf).tobytes():
        return True
    except (TypeError, ValueError):
      continue
  return False


def run_case(case, path: str) -> dict:
  marker = pathlib.Path(path).parent / "PWNED"
  _reset_peak()
  base = _rss_kib("VmRSS")
  tf_before = "tensorflow" in sys.modules
  signal.alarm(ALARM_S)
  t0 = time.perf_counter()
  out, err = None, None
  try:
    out = CALLS[case.call](path)
  except BaseException as e:  # noqa: BLE001  (RecursionError, MemoryError, ... are the point)
    err = e
  finally:
    signal.alarm(0)
  seconds = time.perf_counter() - t0
  # VmHWM, not ru_maxrss: ru_maxrss also keeps the peak of the process this one was forked
  # from before its exec (a pytest that loaded TensorFlow: +1.3 GB); clear_refs resets VmHWM.
  peak = _rss_kib("VmHWM")
  return dict(
      name=case.name, error=None if err is None else type(err).__name__,
      message="" if err is None else str(err)[:600], seconds=round(seconds, 3),
      peak_mib=round(max(peak - base, 0) / 1024, 1),
      tensorflow=not tf_before and "tensorflow" in sys.modules,
      secret=out is not None and _holds_secret(out), pwned=marker.exists())


def main() -> None:
  root = pathlib.Path(sys.argv[1])
  cases = hostile.by_name()
  signal.signal(signal.SIGALRM, _on_alarm)
  records = []
  for name in sys.argv[2:]:
    path = (root / name / "PATH").read_text()
    records.append(run_case(cases[name], path))
  print("RESULT " + json.dumps(records))


if __name__ == "__main__":
  main()
