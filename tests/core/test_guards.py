"""The guards never change what the formulas can compute (issue 24).

Against the float64 formulas of `tests/helpers/reference.py`: float32 gradients
whose squares sit near float32's max, float16 params with Cauchy gradients, the
derivative of the first update through the step cut, the float16 and `mu_dtype`
configurations that used to give non-finite updates, and optax's `mu_dtype`
contract. `python -m benchmarks.guards_check` prints the same numbers.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nadam
from benchmarks import guards_check
from tests.helpers import reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_float32_gradients_whose_squares_fit_v_follow_the_float64_formulas():
  # (1 - b2) g^2 fits float32 here although g^2 itself may not: before, the gradient
  # cut at sqrt(max) / 2 put these 12.9 lr and 16.1 lr off the formulas.
  errors = guards_check.huge_float32()
  print("\nmax |param - formulas| / lr:", errors)
  assert max(errors.values()) <= 1e-3


def test_float16_params_with_cauchy_gradients_are_within_1_5x_the_float16_floor():
  # The floor: the float64 formulas with the params rounded to float16 after each step.
  # Before (gradients cut at 128): 6.3x median, 10.3x worst.
  result = guards_check.float16_cauchy(seeds=range(1, 4))
  print("\nfloat16 Cauchy:", result)
  assert result["ours / floor (median, min, max)"][2] <= 1.5


def test_d_update_1_d_b1_through_the_step_cut_is_the_formulas_float32():
  # inject_hyperparams traces b1, so the step cut is compiled in; at t = 1 the update
  # equals the bound to rounding (eps << |g|). Before: halved (0.2350 for 0.4699).
  ours, formula = guards_check.d_update_d_b1(jnp.float32, 10.0, 1e-7)
  assert abs(ours - formula) <= 1e-3 * abs(formula), (ours, formula)


@pytest.mark.slow  # a fresh interpreter with x64
def test_d_update_1_d_b1_through_the_step_cut_is_the_formulas_float64():
  # Before: exactly 0 in both cases (the update sat on or past the bound).
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  run = subprocess.run([sys.executable, "-m", "benchmarks.guards_check", "--x64"], cwd=ROOT,
                       env=env, capture_output=True, text=True, check=True)
  for name, (ours, formula) in json.loads(run.stdout.splitlines()[-1]).items():
    print(name, ours, formula)
    assert abs(ours - formula) <= 1e-3 * abs(formula), (name, ours, formula)


def test_float16_and_mu_dtype_cases_of_the_issue_give_finite_descending_updates():
  cases = guards_check.narrow_cases()
  for name, result in cases.items():
    assert result.get("finite"), (name, result)
  # nadam(7e4) on g = 1: each update is the formulas' -7.4e4 cut to float16's -65504.
  assert cases["float16 nadam(7e4), g=1 x 3"]["total move"][0] < 0
  # A float16 m saturates instead of staying inf: the run ends near float32 m's.
  m16 = cases["float32, mu_dtype=float16, g=[1e6] then 2000 x [-1]"]["total move"][0]
  m32 = cases["float32, mu_dtype=None, g=[1e6] then 2000 x [-1]"]["total move"][0]
  assert m32 < 0 and m32 <= 0.5 * m16 < 0, (m16, m32)  # before: -24.8 against -0.0022


def test_float16_update_is_formed_before_the_cast_so_it_stays_finite():
  # nadam(1e-6, b1=0.9, b2=0.5), g = [100] then zeros: m decays as 0.9^t, v as 0.5^t.
  # Before, the float16 direction overflowed at step 57 (-inf); the learning rate now
  # scales it in float32 first. While float16 holds v (to t ~ 30) the params are the
  # floor's (the formulas with float16 params); past it v flushes to 0, the formulas
  # cannot be computed in float16, and the steps stay finite and within NAdam's bound.
  grads = [[np.asarray([100.0], np.float16)]] + [[np.zeros(1, np.float16)]] * 59
  params = [np.zeros(1, np.float16)]
  ours = np.asarray([float(h[0][0]) for h in ref.run_ours(
      optax_nadam.nadam(1e-6, b1=0.9, b2=0.5), params, grads)])
  floor = ref.reference_nadam(params, grads, lr=1e-6, b1=0.9, b2=0.5, param_dtype=np.float16)
  assert np.all(np.isfinite(ours)) and np.all(np.diff(ours) < 0)
  np.testing.assert_allclose(ours[:30], [h[0][0] for h in floor[:30]], rtol=1e-3)


@pytest.mark.parametrize("params_dtype,mu_dtype", [
    ("float32", "complex64"), ("bfloat16", "complex64"), ("complex64", "float32"),
    ("complex64", "bfloat16")])
def test_mu_dtype_of_the_other_kind_sets_m_and_descends(params_dtype, mu_dtype):
  # optax's contract: mu_dtype sets m's dtype. A complex m of a real param stays
  # real-valued (the same updates as mu_dtype=None, to bfloat16's rounding); a real m of
  # a complex param keeps the EMA's real part and still descends.
  complex_params = jnp.issubdtype(jnp.dtype(params_dtype), jnp.complexfloating)
  target = jnp.asarray([1.0 + 2.0j, -3.0 + 0.5j] if complex_params else [1.0, -3.0],
                       params_dtype)
  loss = lambda p: jnp.sum(jnp.abs(p - target) ** 2)  # noqa: E731
  params = jnp.zeros(2, params_dtype)
  runs = {}
  for mu in (mu_dtype, None):
    tx = optax_nadam.nadam(1e-1, mu_dtype=mu)
    state = tx.init(params)
    assert state[0].m.dtype == jnp.dtype(mu or params_dtype)
    p = params
    for _ in range(300):
      u, state = tx.update(jnp.conj(jax.grad(loss)(p)), state, p)
      assert u.dtype == p.dtype and bool(jnp.all(jnp.isfinite(u)))
      p = optax.apply_updates(p, u)
    runs[mu] = float(loss(p))
  assert runs[mu_dtype] < 1e-2 * float(loss(params)), runs
  if not complex_params:
    np.testing.assert_allclose(runs[mu_dtype], runs[None], rtol=0.1, atol=1e-4)
