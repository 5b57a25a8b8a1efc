"""Property tests (hypothesis): finite in, finite out; the first step's size and sign.

Hyperparameters are drawn over their whole valid range (b1, b2 in [0, 1) as
float32 values, eps in [1e-12, 1e-1], momentum_decay in [1e-4, 10]) and passed
to one jitted function as traced arrays, so each (tree, dtype) compiles once
however many cases run. Gradient magnitudes are log-uniform over a drawn
sub-range of the dtype's range, with random signs and random exact zeros.

The first step from a fresh state has a closed form. With m = v = 0 and
t = 1: m_1 = (1 - b1) g, v_1 = (1 - b2) g^2, 1 - b2^1 = 1 - b2 and
prod_1 = mu_1, so sqrt(v_1 / (1 - b2)) = |g| and

  update = -lr * g / (|g| + eps) * (1 + c),  c = mu_2 (1 - b1) / (1 - mu_1 mu_2).

Since b1 / 2 <= mu_i < b1 (when b1 > 0), 1 - mu_1 mu_2 > 1 - b1 mu_2, and
c < mu_2 (1 - b1) / (1 - b1 mu_2) <= b1 (1 - b1) / (1 - b1^2) = b1 / (1 + b1).
So |update| <= lr * (1 + 2 b1) / (1 + b1) * |g| / (|g| + eps) < 1.5 lr: the
issue's "at most 2 lr" with a margin, and the bound is approached as
momentum_decay grows (mu_1 = mu_2 = b1).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optax_nadam

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core

# (name, tree of shapes): a fixed set, so compiles stay few.
TREES = {
    "vector": {"w": (7,)},
    "nested": {"dense": {"kernel": (3, 4), "bias": (4,)}, "scale": ()},
    "list": [(2, 3, 2), (5,), (1,)],
}
# log10 of the smallest and largest |g| drawn per dtype. float16 stops at 255
# because v is stored in the parameter's dtype: (1 - b2) g^2 + b2 v exceeds
# float16's max (65504) once |g| > 256 (see test_reliability's overflow tests).
LOG10_RANGE = {
    jnp.float32: (-30.0, 18.0),
    jnp.bfloat16: (-30.0, 18.0),
    jnp.float16: (np.log10(6e-8), np.log10(255.0)),
}
DTYPES = list(LOG10_RANGE)
SETTINGS = dict(
    derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
N_STEPS = 6

unit_f32 = st.floats(0.0, 1.0, exclude_max=True, width=32)
hyperparams = st.fixed_dictionaries({
    "learning_rate": st.floats(-6.0, 0.0).map(lambda x: 10.0**x),
    "b1": unit_f32,
    "b2": unit_f32,
    "eps": st.floats(-12.0, -1.0).map(lambda x: 10.0**x),
    "momentum_decay": st.floats(-4.0, 1.0).map(lambda x: 10.0**x),
})

_traces = {}


def _shapes(tree_name):
  return jax.tree.map(lambda s: s, TREES[tree_name], is_leaf=lambda x: isinstance(x, tuple))


def _draw_grads(data, tree_name, dtype, steps=None, wide=False):
  """Gradients (a tree, or a tree of [steps, ...] stacks) of random magnitude.

  `wide`: float16's whole range (subnormals to 65504), where v and m meet their guards.
  """
  lo_all, hi_all = LOG10_RANGE[dtype]
  if wide:
    lo_all, hi_all = np.log10(6e-8), np.log10(65504.0)
  lo = data.draw(st.floats(lo_all, hi_all), label="log10 |g| low")
  hi = data.draw(st.floats(lo, hi_all), label="log10 |g| high")
  zero_frac = data.draw(st.sampled_from([0.0, 0.25, 1.0]), label="zero fraction")
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

  def leaf(shape):
    shape = shape if steps is None else (steps, *shape)
    g = np.asarray(rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(lo, hi, shape))
    g[rng.random(shape) < zero_frac] = 0.0
    return jnp.asarray(g.astype(np.float32)).astype(dtype)

  return jax.tree.map(leaf, _shapes(tree_name), is_leaf=lambda x: isinstance(x, tuple))


def _hp_arrays(hp):
  return {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}


@functools.lru_cache(maxsize=None)
def _first_step_fn(tree_name, dtype):
  @jax.jit
  def first_step(hp, grads):
    _traces[("first", tree_name, dtype)] = _traces.get(("first", tree_name, dtype), 0) + 1
    tx = optax_nadam.nadam(**hp)
    updates, state = tx.update(grads, tx.init(grads), grads)
    return updates, state
  return first_step


@functools.lru_cache(maxsize=None)
def _run_fn(tree_name, dtype, mu_dtype=None):
  @jax.jit
  def run(hp, grad_stack):
    key = ("run", tree_name, dtype, mu_dtype)
    _traces[key] = _traces.get(key, 0) + 1
    tx = optax_nadam.nadam(**hp, mu_dtype=mu_dtype)
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), grad_stack)

    def body(carry, g):
      p, s = carry
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), u

    (params, state), updates = jax.lax.scan(body, (params, tx.init(params)), grad_stack)
    return params, state, updates
  return run


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _expected_first_step(hp, g):
  """The closed form above, in float64 from the float32-rounded hyperparameters."""
  f = {k: float(np.float32(v)) for k, v in hp.items()}
  b1, psi = f["b1"], f["momentum_decay"]
  mu1 = b1 * (1.0 - 0.5 * 0.96**psi)
  mu2 = b1 * (1.0 - 0.5 * 0.96 ** (2.0 * psi))
  c = mu2 * (1.0 - b1) / (1.0 - mu1 * mu2)
  g = np.asarray(g, np.float64)
  return -f["learning_rate"] * g / (np.abs(g) + f["eps"]) * (1.0 + c), (1.0 + 2 * b1) / (1.0 + b1)


# Tolerance of the first step: float32 arithmetic, then the update is rounded
# to the gradient's dtype. The absolute part covers results below the smallest
# normal float32 (XLA on CPU flushes them to zero) and float16's subnormal grid.
RTOL = {jnp.float32: 2e-5, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}
ATOL = {jnp.float32: np.finfo(np.float32).tiny, jnp.bfloat16: np.finfo(np.float32).tiny,
        jnp.float16: float(np.finfo(np.float16).smallest_subnormal)}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("tree_name", list(TREES))
@settings(max_examples=150, **SETTINGS)
@given(hp=hyperparams, data=st.data())
def test_first_step_is_finite_bounded_against_the_gradient_and_exact(tree_name, dtype, hp, data):
  grads = _draw_grads(data, tree_name, dtype)
  updates, state = _first_step_fn(tree_name, dtype)(_hp_arrays(hp), grads)
  assert _all_finite((updates, state))
  lr = np.float32(hp["learning_rate"])
  for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates)):
    g64, u64 = np.asarray(g, np.float64), np.asarray(u, np.float64)
    expected, factor = _expected_first_step(hp, g64)
    # Against the gradient's sign, never along it; a zero gradient gives exactly 0.
    assert np.all(u64 * g64 <= 0.0)
    assert np.all(u64[g64 == 0.0] == 0.0)
    # At most 2 lr (the bound), and at most the tight bound derived above.
    rtol, atol = RTOL[dtype], ATOL[dtype]
    assert np.all(np.abs(u64) <= 2.0 * lr)
    bound = lr * factor * np.abs(g64) / (np.abs(g64) + np.float32(hp["eps"]))
    # Where (1 - b2) g^2 is below the smallest normal float32, v is subnormal and its
    # square root keeps fewer bits (found by hypothesis with b2 = 1 - 2**-24, |g| =
    # 2.8e-16: 2.8e-5 relative, the same before and after the float32-consistent scalars).
    one_minus_b2 = 1.0 - float(np.float32(hp["b2"]))
    subnormal_v = one_minus_b2 * g64 * g64 < np.finfo(np.float32).tiny
    rtol = np.where(subnormal_v, max(rtol, 1e-3), rtol)
    assert np.all(np.abs(u64) <= bound * (1 + rtol) + atol)
    # And it is the closed form itself.
    assert np.all(np.abs(u64 - expected) <= rtol * np.abs(expected) + atol)


@pytest.mark.parametrize("dtype,mu_dtype", [(jnp.float32, None), (jnp.bfloat16, None),
                                            (jnp.float16, None), (jnp.float32, jnp.float16)],
                         ids=["float32", "bfloat16", "float16", "float32-mu_float16"])
@pytest.mark.parametrize("tree_name", list(TREES))
@settings(max_examples=60, **SETTINGS)
@given(hp=hyperparams, data=st.data())
def test_finite_gradients_keep_updates_params_and_state_finite(tree_name, dtype, mu_dtype, hp,
                                                              data):
  # Each step's gradients are drawn independently (magnitudes jump between steps), so m
  # and v see histories the first-step test does not. Every accepted configuration,
  # float16 params and a float16 m included: float16 gradients up to 65504 (v and m
  # would overflow float16 where their guards act), subnormal ones, any b1 and b2.
  grad_stack = _draw_grads(data, tree_name, dtype, steps=N_STEPS,
                           wide=dtype == jnp.float16 or mu_dtype is not None)
  params, state, updates = _run_fn(tree_name, dtype, mu_dtype)(_hp_arrays(hp), grad_stack)
  assert _all_finite((updates, state))
  if dtype != jnp.float16:  # float16 params themselves can leave float16's range at lr 1
    assert _all_finite(params)
  chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda g: g[0], grad_stack))
  nadam_state = state[0]
  assert int(nadam_state.count) == N_STEPS
  assert 0.0 <= float(nadam_state.mu_product) <= 1.0
  assert all(bool(jnp.all(v >= 0)) for v in jax.tree.leaves(nadam_state.v))
  # A coordinate whose gradient was zero at every step never moves.
  for g, u in zip(jax.tree.leaves(grad_stack), jax.tree.leaves(updates)):
    never = np.all(np.asarray(g) == 0, axis=0)
    assert np.all(np.asarray(u)[:, never] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@settings(max_examples=40, **SETTINGS)
@given(hp=hyperparams)
def test_zero_gradients_give_zero_updates_at_every_step(dtype, hp):
  zeros = jax.tree.map(lambda s: jnp.zeros((N_STEPS, *s), dtype), _shapes("nested"),
                       is_leaf=lambda x: isinstance(x, tuple))
  params, state, updates = _run_fn("nested", dtype, None)(_hp_arrays(hp), zeros)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves((params, state[0].m, state[0].v)))


def test_hyperparameters_are_traced_so_each_tree_and_dtype_compiles_once():
  # Thousands of cases above share one compile per (function, tree, dtype).
  grads = _draw_grads_fixed()
  fn = _first_step_fn("vector", jnp.float32)
  for b1, b2 in [(0.0, 0.0), (0.5, 0.9), (0.9, 0.999)]:
    hp = dict(learning_rate=1e-3, b1=b1, b2=b2, eps=1e-7, momentum_decay=0.004)
    fn(_hp_arrays(hp), grads)
  assert _traces[("first", "vector", jnp.float32)] == 1
  assert set(_traces.values()) == {1}, _traces


def _draw_grads_fixed():
  return {"w": jnp.linspace(-1.0, 1.0, 7)}
