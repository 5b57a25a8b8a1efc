"""The core transformation: state, math, dtypes, optax composition, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nadam
from optax_nadam import ScaleByNadamState, scale_by_nadam
from tests.helpers import reference as ref

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core


def _tree(dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return {
      "dense": {"kernel": jax.random.normal(k[0], (4, 3)).astype(dtype),
                "bias": jax.random.normal(k[1], (3,)).astype(dtype)},
      "conv": jax.random.normal(k[2], (2, 3, 2)).astype(dtype),
      "scale": jax.random.normal(k[3], ()).astype(dtype),
  }


def _grads(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten(
      [jax.random.normal(k, x.shape).astype(x.dtype) for k, x in zip(keys, leaves)])


def _run(tx, params, steps, jit=True):
  step = lambda p, s, g: _apply(tx, p, s, g)  # noqa: E731
  step = jax.jit(step) if jit else step
  state = tx.init(params)
  for i in range(steps):
    params, state = step(params, state, _grads(params, i))
  return params, state


def _apply(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


# --- state -------------------------------------------------------------------

def test_state_layout_and_dtypes():
  params = _tree()
  state = scale_by_nadam().init(params)
  assert isinstance(state, ScaleByNadamState)
  assert ScaleByNadamState._fields == ("count", "mu_product", "m", "v")
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert state.mu_product.dtype == jnp.float32 and state.mu_product.shape == ()
  assert float(state.mu_product) == 1.0
  chex.assert_trees_all_equal_shapes_and_dtypes(state.m, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state.v, params)
  chex.assert_trees_all_equal(state.m, jax.tree.map(jnp.zeros_like, params))


def test_state_dtypes_unchanged_by_update_and_usable_in_cond():
  params = _tree()
  tx = optax_nadam.nadam(1e-2)
  state = tx.init(params)
  _, new_state = tx.update(_grads(params, 0), state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  assert jax.tree.map(lambda x: x.weak_type, state) == jax.tree.map(
      lambda x: x.weak_type, new_state)

  @jax.jit
  def maybe_step(pred, state):
    return jax.lax.cond(
        pred, lambda s: tx.update(_grads(params, 0), s, params)[1], lambda s: s, state)

  chex.assert_trees_all_equal(maybe_step(False, state), state)
  chex.assert_trees_all_close(maybe_step(True, state), new_state)


def test_first_steps_match_float64_formulas():
  hp = dict(lr=0.1, b1=0.8, b2=0.95, eps=1e-3, momentum_decay=0.5, eps_root=1e-4)
  params, grads = ref.make_problem(ref.SHAPES["mixed"], 5)
  tx = optax_nadam.nadam(hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                         eps_root=hp["eps_root"], momentum_decay=hp["momentum_decay"])
  ours = ref.run_ours(tx, params, grads)
  expected = ref.reference_nadam(params, grads, **hp)
  for step_o, step_e in zip(ours, expected):
    for o, e in zip(step_o, step_e):
      np.testing.assert_allclose(o, e, rtol=2e-6, atol=2e-6)


def test_mu_product_is_running_product_of_schedule():
  b1, psi = 0.9, 0.004
  _, state = _run(scale_by_nadam(b1=b1, momentum_decay=psi), _tree(), 7)
  expected = np.prod([b1 * (1 - 0.5 * 0.96 ** (psi * t)) for t in range(1, 8)])
  np.testing.assert_allclose(float(state.mu_product), expected, rtol=1e-6)
  assert int(state.count) == 7


def _naive_update(b1, b2, eps, psi, count, prod, g, m, v):
  """Textbook float32 code for the same step: the control for the next test."""
  f = jnp.float32
  t = f(count + 1)
  mu = f(b1) * (1 - 0.5 * f(0.96) ** (f(psi) * t))
  mu_n = f(b1) * (1 - 0.5 * f(0.96) ** (f(psi) * (t + 1)))
  prod = prod * mu
  m_t = f(b1) * m + (1 - f(b1)) * g
  v_t = f(b2) * v + (1 - f(b2)) * g * g
  m_bar = (1 - mu) * g / (1 - prod) + mu_n * m_t / (1 - prod * mu_n)
  return m_bar / (jnp.sqrt(v_t / (1 - f(b2) ** t)) + f(eps))


@pytest.mark.parametrize("b1,b2,eps,psi,naive_worse", [
    (0.9, 0.999, 1e-7, 0.004, True), (0.9, 0.9999, 1e-7, 0.004, True),
    (0.5, 0.67, 1e-5, 1.0, False), (0.99, 0.999999, 1e-8, 0.004, True)])
def test_per_step_scalars_are_float64_accurate(b1, b2, eps, psi, naive_worse):
  # One step from a given (count, mu_product, m, v) for counts 0..4999: the
  # step's relative error against float64 measures the per-step scalars.
  counts = np.arange(5000)
  prods64 = np.cumprod([1.0] + [b1 * (1 - 0.5 * 0.96 ** (psi * t))
                                for t in range(1, 5000)])
  prods = prods64.astype(np.float32)
  g, m, v = 0.7, 0.3, 0.5
  tx = scale_by_nadam(b1, b2, eps, momentum_decay=psi)

  def ours(count, prod):
    state = ScaleByNadamState(count, prod, jnp.float32(m), jnp.float32(v))
    return tx.update(jnp.float32(g), state)[0]

  got = np.asarray(jax.jit(jax.vmap(ours))(counts.astype(np.int32), prods), np.float64)
  naive = np.asarray(jax.jit(jax.vmap(
      lambda c, p: _naive_update(b1, b2, eps, psi, c, p, jnp.float32(g),
                                 jnp.float32(m), jnp.float32(v))))(
      counts.astype(np.int32), prods), np.float64)
  # The formulas in float64 at the float32-rounded hyperparameters: the betas
  # the float32 EMAs use (rounding them is the state's precision, not the step's).
  given = f"b1={b1} b2={b2}"
  b1, b2, eps, psi = (float(np.float32(x)) for x in (b1, b2, eps, psi))
  t = counts + 1.0
  mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
  mu_n = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
  prod = prods.astype(np.float64) * mu
  m_t, v_t = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
  exact = ((1 - mu) * g / (1 - prod) + mu_n * m_t / (1 - prod * mu_n)) / (
      np.sqrt(v_t / (1 - b2**t)) + eps)
  ours_err = np.max(np.abs(got - exact) / np.abs(exact))
  naive_err = np.max(np.abs(naive - exact) / np.abs(exact))
  print(f"{given}: ours {ours_err:.2g}, textbook float32 {naive_err:.2g}")
  assert ours_err <= 5e-7, ours_err  # a few float32 ulps
  # The control: textbook float32 code loses digits where b2 is near 1
  # (float32(b2) ** t), which is what this test is there to catch.
  if naive_worse:
    assert naive_err > 4 * ours_err, (naive_err, ours_err)


# --- dtypes ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_params_keep_dtype_and_stay_finite(dtype):
  params = _tree(dtype)
  new_params, state = _run(optax_nadam.nadam(1e-2), params, 20)
  chex.assert_trees_all_equal_dtypes(new_params, params)
  chex.assert_tree_all_finite((new_params, state))
  assert state[0].mu_product.dtype == jnp.float32
  chex.assert_trees_all_equal_dtypes(state[0].m, params)
  # It trains like the float32 run, to the dtype's precision.
  f32, _ = _run(optax_nadam.nadam(1e-2), _tree(jnp.float32), 20)
  chex.assert_trees_all_close(
      jax.tree.map(lambda x: x.astype(jnp.float32), new_params), f32, atol=0.1)


def test_mu_dtype_bfloat16_stores_m_in_bf16():
  params = _tree()
  tx = optax_nadam.nadam(1e-2, mu_dtype=jnp.bfloat16)
  new_params, state = _run(tx, params, 10)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].m))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0].v))
  chex.assert_trees_all_equal_dtypes(new_params, params)
  full, _ = _run(optax_nadam.nadam(1e-2), params, 10)
  chex.assert_trees_all_close(new_params, full, atol=1e-3)


def test_complex_params_use_abs_squared_second_moment():
  rng = np.random.default_rng(0)
  p0 = (rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))).astype(np.complex64)
  gs = [(rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))).astype(np.complex64)
        for _ in range(10)]
  ours = ref.run_ours(optax_nadam.nadam(1e-2), [p0], [[g] for g in gs])
  expected = ref.reference_nadam([p0], [[g] for g in gs], lr=1e-2)
  assert ours[-1][0].dtype == np.complex64
  np.testing.assert_allclose(ours[-1][0], expected[-1][0], rtol=1e-5, atol=1e-5)


def test_count_saturates_at_int32_max_with_finite_updates():
  params = _tree()
  tx = scale_by_nadam()
  state = tx.init(params)._replace(count=jnp.asarray(jnp.iinfo(jnp.int32).max - 1,
                                                     jnp.int32))
  for i in range(3):
    updates, state = tx.update(_grads(params, i), state)
    chex.assert_tree_all_finite((updates, state))
  assert int(state.count) == jnp.iinfo(jnp.int32).max


# --- composition with optax --------------------------------------------------

def test_one_trace_for_many_steps():
  tx = optax_nadam.nadam(1e-2)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    return _apply(tx, params, state, grads)

  params = _tree()
  state = tx.init(params)
  for i in range(5):
    params, state = step(params, state, _grads(params, i))


def test_chain_with_clip_by_global_norm_clips_first():
  params = _tree()
  grads = jax.tree.map(lambda g: 100.0 * g, _grads(params, 0))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax_nadam.nadam(1e-2))
  updates, _ = tx.update(grads, tx.init(params), params)
  clipped = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0]
  plain = optax_nadam.nadam(1e-2)
  expected, _ = plain.update(clipped, plain.init(params), params)
  chex.assert_trees_all_close(updates, expected)


def test_learning_rate_schedule_sees_count_before_increment():
  schedule = optax.linear_schedule(1e-2, 0.0, 10)
  params = _tree()
  got, _ = _run(optax_nadam.nadam(schedule), params, 4)
  # Manual: scale the direction of scale_by_nadam by -schedule(count).
  core = scale_by_nadam()
  state, p = core.init(params), params
  for i in range(4):
    direction, state = core.update(_grads(p, i), state)
    p = optax.apply_updates(p, jax.tree.map(lambda d, i=i: -schedule(i) * d, direction))
  chex.assert_trees_all_close(got, p, rtol=1e-6)


def test_inject_hyperparams_same_trajectory_and_changeable_at_run_time():
  params = _tree()
  injected = optax.inject_hyperparams(optax_nadam.nadam)(
      learning_rate=1e-2, b1=0.9, momentum_decay=0.004)
  got, state = _run(injected, params, 5)
  want, _ = _run(optax_nadam.nadam(1e-2), params, 5)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)

  # Change b1 and momentum_decay at run time: the next step is the one the
  # formulas give with the new values (same jitted function, no retrace).
  state.hyperparams["b1"] = jnp.asarray(0.8)
  state.hyperparams["momentum_decay"] = jnp.asarray(1.0)
  g = _grads(got, 99)
  updates, new_state = jax.jit(injected.update)(g, state, got)
  core = scale_by_nadam(b1=0.8, momentum_decay=1.0)
  expected, _ = core.update(g, state.inner_state[0])
  chex.assert_trees_all_close(updates, jax.tree.map(lambda x: -1e-2 * x, expected),
                              rtol=1e-5)
  assert new_state.inner_state[0].mu_product.dtype == jnp.float32


def test_multi_steps_accumulates_then_steps():
  params = _tree()
  tx = optax.MultiSteps(optax_nadam.nadam(1e-2), every_k_schedule=3)
  state = tx.init(params)
  g = [_grads(params, i) for i in range(3)]
  p = params
  for i in range(3):
    updates, state = tx.update(g[i], state, p)
    p = optax.apply_updates(p, updates)
    if i < 2:
      chex.assert_trees_all_equal(p, params)
  mean_g = jax.tree.map(lambda *x: sum(x) / 3, *g)
  plain = optax_nadam.nadam(1e-2)
  u, _ = plain.update(mean_g, plain.init(params), params)
  chex.assert_trees_all_close(p, optax.apply_updates(params, u), rtol=1e-6)


def test_masked_applies_nadam_only_where_the_mask_is_true():
  params = _tree()
  mask = {"dense": {"kernel": True, "bias": False}, "conv": True, "scale": False}
  tx = optax.masked(optax_nadam.nadam(1e-2), mask)
  grads = _grads(params, 0)
  updates, state = tx.update(grads, tx.init(params), params)
  # optax.masked passes masked-out updates through untransformed.
  np.testing.assert_array_equal(updates["dense"]["bias"], grads["dense"]["bias"])
  plain = optax_nadam.nadam(1e-2)
  want, _ = plain.update(grads, plain.init(params), params)
  chex.assert_trees_all_close(updates["dense"]["kernel"], want["dense"]["kernel"])
  chex.assert_trees_all_close(updates["conv"], want["conv"])
  nadam_state = state.inner_state[0]
  assert isinstance(nadam_state.m["dense"]["bias"], optax.MaskedNode)


def test_apply_if_finite_skips_nan_step_and_keeps_state():
  params = _tree()
  tx = optax.apply_if_finite(optax_nadam.nadam(1e-2), max_consecutive_errors=5)
  state = tx.init(params)
  _, state = tx.update(_grads(params, 0), state, params)
  bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan), _grads(params, 1))
  updates, new_state = tx.update(bad, state, params)
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))


def test_lax_scan_over_steps_equals_python_loop():
  params = _tree()
  tx = optax_nadam.nadam(1e-2)
  grads = [_grads(params, i) for i in range(6)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)

  def body(carry, g):
    return _apply(tx, *carry, g), None

  (scanned, _), _ = jax.lax.scan(body, (params, tx.init(params)), stacked)
  p, s = params, tx.init(params)
  for g in grads:
    p, s = _apply(tx, p, s, g)
  chex.assert_trees_all_close(scanned, p, rtol=1e-6, atol=1e-7)


def test_vmap_over_independent_optimizers():
  tx = optax_nadam.nadam(1e-2)
  batch = jax.tree.map(lambda *x: jnp.stack(x), _tree(seed=0), _tree(seed=1))
  grads = jax.tree.map(lambda *x: jnp.stack(x), _grads(_tree(), 0), _grads(_tree(), 1))
  states = jax.vmap(tx.init)(batch)
  new, _ = jax.vmap(lambda p, s, g: _apply(tx, p, s, g))(batch, states, grads)
  for i, seed in enumerate([0, 1]):
    single = _tree(seed=seed)
    want, _ = _apply(tx, single, tx.init(single), _grads(_tree(), i))
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], new), want)


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(b1=1.0), "b1"), (dict(b1=-0.1), "b1"), (dict(b2=1.0), "b2"),
    (dict(b2=1.5), "b2"), (dict(eps=-1e-8), "eps"), (dict(eps_root=-1.0), "eps_root"),
    (dict(momentum_decay=-0.004), "momentum_decay"), (dict(b1=float("nan")), "b1"),
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=jnp.asarray(-1.0)), "learning_rate"),
])
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optax_nadam.nadam(**kwargs)


def test_invalid_weight_decay_and_mu_dtype():
  with pytest.raises(ValueError, match="weight_decay"):
    optax_nadam.nadamw(weight_decay=-1.0)
  with pytest.raises(ValueError, match="mu_dtype"):
    scale_by_nadam(mu_dtype=jnp.int32)


def test_mismatched_gradient_tree_names_the_leaf():
  params = _tree()
  tx = scale_by_nadam()
  state = tx.init(params)
  bad = _grads(params, 0)
  bad["dense"]["kernel"] = jnp.ones((3, 4))
  with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*\(3, 4\).*\(4, 3\)"):
    tx.update(bad, state)
  missing = _grads(params, 0)
  del missing["conv"]
  with pytest.raises(ValueError, match="conv"):
    tx.update(missing, state)
  ints = jax.tree.map(lambda x: x.astype(jnp.int32), _grads(params, 0))
  with pytest.raises(TypeError, match="int32"):
    tx.update(ints, state)
