"""`optax_nadam.keras.Nadam` keeps the params' precision: x64, complex, schedules.

Under ``jax_enable_x64`` (process-global, so in a fresh interpreter:
`tests/scripts/x64_keras.py`) gradient accumulation sums in each param's dtype
(complex stays complex) and Keras schedule configs compute the learning rate
in the scalar dtype; both then follow float64 formulas written in the script.
Before: float64 accumulation 6.3e-9 off, complex128 accumulation 0.10 off (the
imaginary part dropped), schedules up to 2.0e-8 off (float32 learning rates).
With x64 off, complex64 params keep their imaginary part while accumulating.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_nadam.keras import Nadam
from tests.helpers import subproc
from tests.scripts import x64_keras

pytestmark = pytest.mark.core

X64_TOL = 1e-12


@pytest.fixture(scope="module")
def x64():
  return subproc.run_script("x64_keras", devices=1)


@pytest.mark.parametrize("kind", ["float64", "complex128"])
def test_accumulation_under_x64_follows_the_float64_formulas(x64, kind):
  result = x64[f"accumulation_{kind}"]
  print(f"\n{kind} params, gradient_accumulation_steps=3: max error {result['max_error']:.3g}"
        f" (params moved {result['moved']:.3g})")
  assert result["dtypes"] == [kind, kind]
  assert result["max_error"] < X64_TOL
  assert result["moved"] > 1e-2  # the comparison is between moving trajectories


@pytest.mark.parametrize("name", list(x64_keras.SCHEDULES))
def test_schedule_configs_under_x64_follow_the_float64_formulas(x64, name):
  error = x64["schedules_float64"][name]
  print(f"\n{name}: max error {error:.3g}")
  assert error < X64_TOL


def test_complex64_accumulation_keeps_the_imaginary_part():
  params, grads = x64_keras._problem(True, 6)
  params = [np.asarray(p, np.complex64) for p in params]
  grads = [[np.asarray(g, np.complex64) for g in gs] for gs in grads]
  tx = Nadam(learning_rate=1e-2, gradient_accumulation_steps=3)
  history, dtypes = x64_keras._run(tx, params, grads)
  assert dtypes == ["complex64", "complex64"]
  mean_grads = [[sum(grads[j * 3 + i][leaf].astype(np.complex128) for i in range(3)) / 3
                 for leaf in range(2)] for j in range(2)]
  reference = x64_keras.nadam64(params, mean_grads, lambda step: 1e-2)
  error = x64_keras._max_err([history[2], history[5]], reference)
  assert error < 1e-6, error  # float32 rounding; dropping the imaginary part is ~0.1


def test_accumulator_state_has_each_params_dtype_at_least_float32():
  params = {"f32": jnp.zeros(2), "bf16": jnp.zeros(2, jnp.bfloat16),
            "c64": jnp.zeros(2, jnp.complex64)}
  state = Nadam(gradient_accumulation_steps=2).init(params)
  multi = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, optax.MultiStepsState)) if isinstance(s, optax.MultiStepsState)]
  assert len(multi) == 1
  assert {k: str(v.dtype) for k, v in multi[0].acc_grads.items()} == {
      "f32": "float32", "bf16": "float32", "c64": "complex64"}
