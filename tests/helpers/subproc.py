"""Runs the scripts of ``tests/scripts/`` in fresh interpreters with simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` only takes effect before
jax starts its backend, and it would change every later test in the pytest
process; so each script runs in its own subprocess with the flag in its
environment, prints one ``RESULT {json}`` line, and the test asserts on that.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
RESULT_PREFIX = "RESULT "
TIMEOUT_S = 180


def script_env(devices: int) -> Dict[str, str]:
  """The environment of a script: ``devices`` CPU devices, CPU platform, quiet TF/absl."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  # The scripts import ``tests.helpers`` and this checkout's ``optax_nadam``.
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  return env


def start_script(name: str, args: Sequence[str] = (), devices: int = 8) -> subprocess.Popen:
  """Starts ``tests/scripts/<name>.py`` with ``args``; stdout and stderr are captured as text."""
  return subprocess.Popen(
      [sys.executable, str(SCRIPTS / f"{name}.py"), *map(str, args)],
      cwd=REPO, env=script_env(devices), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
  )


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> Dict[str, Any]:
  """Waits for ``proc`` (killing it after ``timeout`` s) and returns its parsed result.

  Raises:
    AssertionError: the script timed out, failed, or printed no result line; the
      message holds the end of its stderr.
  """
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"{proc.args} timed out after {timeout} s:\n{err[-3000:]}") from None
  assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{err[-4000:]}"
  lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
  assert lines, f"{proc.args} printed no result line:\nstdout:\n{out[-2000:]}\n{err[-2000:]}"
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_script(name: str, args: Sequence[str] = (), devices: int = 8,
               timeout: Optional[float] = None) -> Dict[str, Any]:
  """Runs ``tests/<name>.py`` to completion and returns the JSON it printed."""
  return finish(start_script(name, args, devices), timeout or TIMEOUT_S)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now (for the jax coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
