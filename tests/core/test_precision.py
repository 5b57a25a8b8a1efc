"""The dtype policy: float64 runs at float64 accuracy, float32 and narrower unchanged.

The per-step scalars and ``mu_product`` are float32 for float32, bfloat16,
float16 and complex64 trees and float64 when a leaf is float64 or complex128.
Everything under ``jax_enable_x64`` runs in two subprocesses
(`tests/scripts/x64_precision.py`, `tests/scripts/x64_state.py`, started together once for the
module and read when first needed) so x64 never reaches this process; their float32 counterparts are
computed here, with x64 off.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_nadam
from optax_nadam import scale_by_nadam
from tests.helpers import subproc as _subproc
from tests.scripts import x64_precision as x64_script

FLOAT64_TOL = 1e-13  # max |params - float64 formulas| over 200 steps
HYPER_FD_RTOL = 1e-6  # x64 autodiff vs float64 finite differences
HYPER_F32_RTOL = 1e-2  # float32 autodiff vs the float64 one


class _Scripts:
  """The x64 subprocesses, started at once, each finished when first read."""

  def __init__(self):
    self._procs = {name: _subproc.start_script(script, devices=1)
                   for name, script in (("numerics", "x64_precision"), ("state", "x64_state"))}
    self._results = {}

  def __getitem__(self, name):
    if name not in self._results:
      self._results[name] = _subproc.finish(self._procs[name])
    return self._results[name]

  def close(self):
    for proc in self._procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def x64():
  scripts = _Scripts()
  yield scripts
  scripts.close()


def _rel(a, b):
  return abs(a - b) / abs(b)


# --- x64 off: float32 and narrower trees --------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "complex64"])
def test_scalars_are_float32_for_32_bit_and_narrower_trees(dtype):
  params = {"w": jnp.ones((3,), dtype), "b": np.zeros(2, np.float64)}  # float64 numpy -> f32
  state = scale_by_nadam().init(params)
  assert state.mu_product.dtype == jnp.float32
  _, new_state = scale_by_nadam().update(jax.tree.map(jnp.ones_like, state.v), state)
  assert new_state.mu_product.dtype == jnp.float32


def _documented_float32_step(b1, b2, eps, psi):
  """The float32 step as documented, written independently of the package.

  Concrete hyperparameters are rounded to float32, every scalar derived from
  one (1 - b2, log b2) is evaluated in float64 from the rounded value and
  rounded once to float32; every per-step scalar is float32; sqrt(1 - b2^t)
  is folded into the coefficients (eps_root = 0); each leaf is computed in
  float32. (The guards of the gradient and of the step never act on these
  gradients; test_overflow.py and test_guards.py test them.)
  """
  f32 = np.float32
  b1, b2, psi = (float(f32(x)) for x in (b1, b2, psi))
  log_decay, log_b2 = f32(psi * math.log(0.96)), f32(math.log(b2))
  b1_, b2_, one_minus_b1, one_minus_b2 = f32(b1), f32(b2), f32(1 - b1), f32(1 - b2)

  @jax.jit
  def step(count, prod, m, v, g):
    bound = 1e3  # far above any step here (the formula's bound is below 40)
    t = (count + 1).astype(jnp.float32)
    mu = b1_ * (1 - 0.5 * jnp.exp(t * log_decay))
    mu_next = b1_ * (1 - 0.5 * jnp.exp((t + 1) * log_decay))
    prod = prod * mu
    root = jnp.sqrt(-jnp.expm1(t * log_b2))
    coef_g = (1 - mu) / (1 - prod) * root
    coef_m = mu_next / (1 - prod * mu_next) * root
    eps_hat = f32(eps) * root
    out = {}
    for k in g:
      g_k = g[k].astype(jnp.float32)
      # (1 - b2) g^2 as ((1 - b2) g) g; where v_t would overflow v's dtype it is its
      # largest value V (g cut where its own term exceeds V).
      b2_v = b2_ * v[k].astype(jnp.float32)
      if float(jnp.finfo(g[k].dtype).max) ** 2 > float(jnp.finfo(v[k].dtype).max):
        v_max = f32(jnp.finfo(v[k].dtype).max)
        limit = jnp.sqrt(v_max) * jax.lax.rsqrt(one_minus_b2)
        g_cut = jnp.clip(g_k, -limit, limit)
        v_k = b2_v + (one_minus_b2 * g_cut) * g_cut
        v_k = jnp.where(v_k > v_max, v_max, v_k)
        g_k = g_cut + 0.0 * g_k
      else:
        v_k = b2_v + (one_minus_b2 * g_k) * g_k
      m_k = b1_ * m[k].astype(jnp.float32) + one_minus_b1 * g_k
      u_k = (coef_g * g_k + coef_m * m_k) / (jnp.sqrt(v_k) + eps_hat)
      u_k = jnp.clip(u_k, -bound, bound)  # bound: see test_overflow.py
      out[k] = (u_k.astype(g[k].dtype), m_k.astype(m[k].dtype), v_k.astype(v[k].dtype))
    return prod, out

  return step


@pytest.mark.parametrize("hp", [dict(b1=0.9, b2=0.999, eps=1e-7, psi=0.004),
                                dict(b1=0.5, b2=0.67, eps=1e-5, psi=1.0)])
def test_float32_step_is_bitwise_the_documented_float32_computation(hp):
  # Catches any change of the float32 path: a scalar computed in float64 and
  # rounded, another operation order, a leaf computed in a wider type.
  rng = np.random.default_rng(0)
  params = {"f32": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
            "bf16": jnp.asarray(rng.normal(size=(300,)), jnp.bfloat16),
            "f16": jnp.asarray(rng.normal(size=(11,)), jnp.float16)}
  tx = scale_by_nadam(hp["b1"], hp["b2"], hp["eps"], momentum_decay=hp["psi"])
  update = jax.jit(tx.update)
  expected_step = _documented_float32_step(**hp)
  state = tx.init(params)
  for i in range(20):
    g = {k: jnp.asarray(rng.normal(size=x.shape), x.dtype) for k, x in params.items()}
    prod, expected = expected_step(state.count, state.mu_product, state.m, state.v, g)
    updates, state = update(g, state)
    assert np.array_equal(prod, state.mu_product), i
    for k in params:
      for got, want in zip((updates[k], state.m[k], state.v[k]), expected[k]):
        assert got.dtype == want.dtype and np.array_equal(got, want), (i, k)


@pytest.mark.slow
def test_low_precision_trees_compute_the_same_bits_with_x64_on(x64):
  # With x64 on, float32 / bf16 / f16 / complex64 trees still take float32
  # scalars (no float64 anywhere in the lowered step) and the same bits.
  there = x64["numerics"]["low_precision_digests"]
  if jax.default_backend() == "cpu":
    here = x64_script.low_precision_digests()
  else:  # the x64 script runs on the CPU (tests/helpers/subproc.py): compare on the same platform
    here = _subproc.run_script("x64_precision", ["--x64-off-digests"],
                               devices=1)["low_precision_digests"]
  assert here == there
  assert len(here) == 2 * 6
  assert not any(x64["numerics"]["low_precision_hlo_has_f64"].values())


# --- x64 on: float64, complex128, mixed ---------------------------------------

@pytest.mark.slow
def test_float64_params_reach_float64_accuracy(x64):
  errors = x64["numerics"]["float64_errors"]
  print("float64: max |params - float64 formulas| over 200 steps:", errors)
  assert len(errors) == 6
  assert max(errors.values()) <= FLOAT64_TOL, errors


@pytest.mark.slow
def test_float64_matches_torch_nadam_to_torch_float64_error(x64):
  result = x64["state"]["torch_float64"]
  print("float64 vs torch NAdam (float64 tensors):", result)
  assert result["torch_dtype"] == "float64"
  assert result["ours_error"] <= FLOAT64_TOL
  # torch keeps a float32 mu_product (its default scalar dtype): ~1e-10 off.
  assert result["torch_error"] <= 1e-9
  assert result["ours_vs_torch"] <= result["torch_error"] + FLOAT64_TOL


@pytest.mark.slow
def test_complex128_matches_complex_formulas(x64):
  result = x64["numerics"]["complex128"]
  print("complex128: max |params - complex formulas| over 200 steps:", result)
  assert result["dtype"] == "complex128"
  assert max(v for k, v in result.items() if k != "dtype") <= FLOAT64_TOL


@pytest.mark.slow
def test_mixed_float64_float32_tree_keeps_each_leaf_dtype(x64):
  result = x64["numerics"]["mixed"]
  print("mixed float64/float32 tree:", result)
  assert result["param_dtypes"] == ["float64", "float64", "float32", "float32"]
  # count, mu_product, m (4 leaves), v (4 leaves).
  assert result["state_dtypes"] == ["int32", "float64"] + 2 * [
      "float64", "float64", "float32", "float32"]
  assert result["float64_leaves_error"] <= FLOAT64_TOL
  # float32 leaves: a float32-only run's trajectory, to float32 rounding.
  assert result["float32_leaves_vs_float32_run"] <= 1e-5
  assert result["float32_leaves_error"] <= 2 * result["float32_run_error"]


@pytest.mark.slow
def test_float64_state_round_trips_exactly(x64):
  result = x64["state"]["state"]
  print("float64 state round trips:", result)
  assert result["mu_product_dtype"] == "float64"
  assert result["safety_round_trip"] and result["check_state_refuses_float32_mu_product"]
  assert result["safety_widens_float32_mu_product"] == ["float64", True]
  assert result["grouped"] == {"mu_product_dtype": "float64", "vs_plain": 0.0,
                               "regroup_same_bits": True}
  keras = result["keras"]
  assert keras["weights_dtypes"] == ["int64", "float64", "float64"]
  assert keras["set_get_same_bits"] and keras["vs_nadam"] <= FLOAT64_TOL
  torch_ = result["torch"]
  assert torch_["imported_mu_product_dtype"] == "float64"
  assert torch_["imported_exact"] and torch_["exported_exact"]
  assert torch_["exported_dtypes"] == ["torch.float64"]
  assert torch_["ours_round_trip_same_bits"]
  assert result["orbax_same_bits"]


# --- hyperparameter gradients -------------------------------------------------

@pytest.mark.slow
def test_hypergradients_x64_equal_float64_finite_differences(x64):
  result = x64["numerics"]["hypergradients"]
  fd = result["fd"]
  for way in ("closure", "injected"):
    rel = {k: _rel(g, fd[k]) for k, g in result[way].items()}
    print(f"x64 hypergradients ({way}) vs finite differences, relative:", rel)
    assert sorted(rel) == sorted(x64_script.HYPER)
    assert max(rel.values()) <= HYPER_FD_RTOL, (way, rel)


@pytest.mark.slow
def test_hypergradients_float32_finite_and_close_to_float64(x64):
  here = x64_script.hypergradients("float32")
  exact = x64["numerics"]["hypergradients"]["closure"]
  for way in ("closure", "injected"):
    rel = {k: _rel(g, exact[k]) for k, g in here[way].items()}
    print(f"float32 hypergradients ({way}) vs float64, relative:", rel)
    assert all(math.isfinite(g) for g in here[way].values())
    assert max(rel.values()) <= HYPER_F32_RTOL, (way, rel)


@pytest.mark.slow
def test_x64_does_not_leak_into_this_process(x64):
  assert x64["numerics"] and x64["state"]
  assert not jax.config.jax_enable_x64
  assert jnp.asarray(1.0).dtype == jnp.float32
  assert optax_nadam.nadam(1e-2).init(jnp.ones(2))[0].mu_product.dtype == jnp.float32
