"""Failure modes made loud or harmless: overflow, non-finite gradients, long runs,
mismatched input and hyperparameters at the edges of their range.

Each test asserts the policy docs/reliability.md documents.
"""

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

INT32_MAX = int(np.iinfo(np.int32).max)


def _params(dtype=jnp.float32):
  """A nested dict/list tree: paths like ['dense']['kernel'] and ['blocks'][1]['w']."""
  return {
      "dense": {"kernel": jnp.zeros((4, 3), dtype), "bias": jnp.zeros((3,), dtype)},
      "blocks": [jnp.zeros((2,), dtype), {"w": jnp.zeros((2, 2), dtype)}],
  }


def _grads(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return treedef.unflatten(
      [jnp.asarray(rng.normal(size=x.shape), jnp.float32).astype(x.dtype) for x in leaves])


def _step(tx):
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
  return step


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# --- v_t overflow: v holds the dtype's max, g is cut to match ---------------------

# |g| above sqrt(max) overflows g^2 in float32 (and bfloat16, computed in float32).
HUGE = {jnp.float32: 1e21, jnp.bfloat16: 1e21}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_overflowing_gradient_is_cut_so_v_stays_finite_and_the_coordinate_keeps_moving(dtype):
  lr = 1e-2
  tx = optax_nadam.nadam(lr)
  step = _step(tx)
  params = jnp.zeros(3, dtype)
  state = tx.init(params)
  big = jnp.asarray([HUGE[dtype], 1.0, -HUGE[dtype]], jnp.float32).astype(dtype)
  params, state, updates = step(params, state, big)
  # (1 - b2) g^2 = 1e39 would overflow v's dtype: v holds its largest value and m is
  # the gradient cut to sqrt(max / (1 - b2)) (optax_nadam/_bounds.py).
  v_max = float(jnp.finfo(dtype).max)
  v = np.asarray(state[0].v, np.float64)[[0, 2]]
  np.testing.assert_allclose(v, v_max, rtol=1e-2)
  m = np.asarray(state[0].m, np.float64)[[0, 2]]
  np.testing.assert_allclose(np.abs(m), 0.1 * np.sqrt(v_max / (1 - 0.999)), rtol=1e-2)
  assert _finite((params, state))
  u = np.asarray(updates, np.float64)
  # Against the gradient, and the formulas' first step for a gradient of that sign
  # (1.06 lr; tests/core/test_overflow.py checks every step against NAdam's bound).
  assert u[0] < 0 < u[2] and np.all(np.abs(u) <= 2 * lr)
  ones = jnp.ones(3, dtype)
  for _ in range(20):
    before = np.asarray(params, np.float64)
    params, state, updates = step(params, state, ones)
    assert _finite((params, state))
    u = np.asarray(updates, np.float64)
    # Every coordinate still moves (an infinite v would give exactly 0 here,
    # forever); the huge gradient's momentum still dominates the third.
    assert u[0] < 0 and u[1] < 0 and u[2] > 0 and np.all(np.abs(u) <= 2 * lr), u
    assert np.all(np.asarray(params, np.float64) != before)


def test_float16_v_is_guarded_only_where_it_would_overflow():
  # float16 v overflows once (1 - b2) g^2 + b2 v > 65504: at once for |g| > 8094
  # (b2 = 0.999). g = 1000 fits (v -> 1e6 (1 - 0.999^t), 65504 after ~70 steps): the
  # formulas' steps until then, and v at 65504 with a matching cut after.
  tx = optax_nadam.nadam(1e-3)
  step = _step(tx)
  params = jnp.zeros(2, jnp.float16)
  state = tx.init(params)
  g = jnp.asarray([1000.0, -1.0], jnp.float16)
  vs = []
  for _ in range(300):
    params, state, updates = step(params, state, g)
    assert _finite((params, state))
    u = np.asarray(updates, np.float64)
    assert u[0] < 0 < u[1]
    vs.append(float(np.asarray(state[0].v, np.float64)[0]))
  # The formulas' v while it fits in float16 (which rounds it each step), then its max.
  np.testing.assert_allclose(vs[:40], [1e6 * (1 - 0.999 ** t) for t in range(1, 41)],
                             rtol=2e-3)
  assert vs[-1] == 65504.0
  # Past that, v holds 65504 while m keeps g = 1000 (its own term fits): the steps
  # are up to 2x the formulas' steady step (g = -1's), cut to NAdam's bound if longer.
  assert 0.3 * u[1] < -u[0] < 2.5 * u[1]


@pytest.mark.peers
def test_overflow_torch_freezes_the_coordinate_we_keep_it_moving():
  # torch.optim.NAdam (float32): exp_avg_sq = inf once (1 - b2) g^2 overflows
  # (|g| > ~5.8e20 at b2 = 0.999), and every later step of that coordinate is
  # m / inf = 0: it never moves again. Ours cuts the gradient and keeps moving.
  import torch

  grads = [np.asarray([1e21, 1.0], np.float32)] + [np.ones(2, np.float32)] * 30
  p0 = np.zeros(2, np.float32)
  theirs = ref.run_torch([p0], [[g] for g in grads], lr=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                         momentum_decay=0.004)
  ours = ref.run_ours(optax_nadam.nadam(1e-2, eps=1e-8), [p0], [[g] for g in grads])
  torch_p0 = np.asarray([h[0][0] for h in theirs])
  ours_p0 = np.asarray([h[0][0] for h in ours])
  assert np.all(torch_p0 == 0.0)  # frozen from the first step on
  assert np.all(np.diff(ours_p0) < 0) and ours_p0[0] < 0  # moves at every step
  # The other coordinate is unaffected in both, and they agree on it.
  np.testing.assert_allclose([h[0][1] for h in ours], [h[0][1] for h in theirs], rtol=1e-5)
  # And torch's v really is infinite (the mechanism named above).
  pt = torch.zeros(1, requires_grad=True)
  opt = torch.optim.NAdam([pt], lr=1e-2)
  pt.grad = torch.tensor([1e21])
  opt.step()
  assert torch.isinf(opt.state[pt]["exp_avg_sq"]).all()


# --- non-finite gradients ------------------------------------------------------

def test_nan_and_inf_gradients_propagate_without_a_wrapper():
  tx = optax_nadam.nadam(1e-2)
  step = _step(tx)
  params = _params()
  _, clean_state, clean_u = step(params, tx.init(params), _grads(params, 0))
  g = _grads(params, 0)
  g["dense"]["kernel"] = g["dense"]["kernel"].at[0, 0].set(jnp.nan).at[1, 1].set(jnp.inf)
  _, state, updates = step(params, tx.init(params), g)
  nadam_state = state[0]
  m, v, u = (x["dense"]["kernel"] for x in (nadam_state.m, nadam_state.v, updates))
  # NaN: m, v and the update are NaN at that coordinate.
  assert jnp.isnan(m[0, 0]) and jnp.isnan(v[0, 0]) and jnp.isnan(u[0, 0])
  # +Inf: m and the update are NaN (not a cut finite gradient: a non-finite
  # gradient stays visible, like a NaN one); v, which would overflow, holds float32's
  # largest value.
  assert jnp.isnan(m[1, 1]) and jnp.isnan(u[1, 1])
  np.testing.assert_allclose(float(v[1, 1]), float(np.finfo(np.float32).max), rtol=1e-6)
  # Nothing else is touched: the scalars and every other coordinate are the clean run's.
  assert int(nadam_state.count) == 1
  assert float(nadam_state.mu_product) == float(clean_state[0].mu_product)
  mask = np.ones((4, 3), bool)
  mask[0, 0] = mask[1, 1] = False
  np.testing.assert_array_equal(np.asarray(u)[mask],
                                np.asarray(clean_u["dense"]["kernel"])[mask])
  chex.assert_trees_all_equal(updates["blocks"], clean_u["blocks"])
  # A later finite gradient does not heal the coordinate: the state stays non-finite.
  _, state, updates = step(params, state, _grads(params, 1))
  assert jnp.isnan(updates["dense"]["kernel"][0, 0])
  assert jnp.isnan(updates["dense"]["kernel"][1, 1])


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf, -jnp.inf], ids=["nan", "inf", "-inf"])
def test_apply_if_finite_skips_the_step_bit_identically(bad_value):
  inner = optax_nadam.nadam(1e-2)
  tx = optax.apply_if_finite(inner, max_consecutive_errors=3)
  step, plain = _step(tx), _step(inner)
  params = _params()
  p, s = params, tx.init(params)
  p_ref, s_ref = params, inner.init(params)
  for i in range(4):
    if i == 2:  # a bad step in the middle
      bad = _grads(params, 99)
      bad["blocks"][1]["w"] = bad["blocks"][1]["w"].at[1, 0].set(bad_value)
      new_p, new_s, updates = step(p, s, bad)
      chex.assert_trees_all_equal(new_s.inner_state, s.inner_state)
      chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
      chex.assert_trees_all_equal(new_p, p)
      assert int(new_s.notfinite_count) == 1 and not bool(new_s.last_finite)
      p, s = new_p, new_s
      continue
    g = _grads(params, i)
    p, s, _ = step(p, s, g)
    p_ref, s_ref, _ = plain(p_ref, s_ref, g)
  # The run with a skipped step is the run without it.
  chex.assert_trees_all_close(p, p_ref, rtol=1e-6, atol=0)
  chex.assert_trees_all_close(s.inner_state, s_ref, rtol=1e-6, atol=0)
  assert int(s.total_notfinite) == 1 and int(s.notfinite_count) == 0


def test_apply_if_finite_applies_after_max_consecutive_errors():
  # optax documents it: after `k` skipped steps in a row it gives up and
  # applies the next non-finite one, which then poisons the state.
  k = 2
  tx = optax.apply_if_finite(optax_nadam.nadam(1e-2), max_consecutive_errors=k)
  step = _step(tx)
  params = _params()
  p, s, _ = step(params, tx.init(params), _grads(params, 0))
  nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  for i in range(k):
    p_new, s_new, _ = step(p, s, nan)
    chex.assert_trees_all_equal((p_new, s_new.inner_state), (p, s.inner_state))
    assert int(s_new.notfinite_count) == i + 1
    p, s = p_new, s_new
  p, s, _ = step(p, s, nan)
  assert int(s.inner_state[0].count) == 2
  assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(p))


def test_apply_if_finite_lets_a_huge_finite_gradient_through_cut():
  # 1e21 is finite: apply_if_finite does not skip it; the gradient cut keeps v finite.
  tx = optax.apply_if_finite(optax_nadam.nadam(1e-2), max_consecutive_errors=3)
  params = jnp.zeros(2)
  updates, s = tx.update(jnp.asarray([1e21, 1.0]), tx.init(params), params)
  assert int(s.notfinite_count) == 0 and int(s.inner_state[0].count) == 1
  assert _finite((updates, s)) and float(updates[0]) < 0


# --- long runs ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_million_steps_under_scan_stay_finite(dtype):
  n, lr = 1_000_000, 1e-3
  tx = optax_nadam.nadam(lr)

  @jax.jit
  def run():
    # A cheap deterministic sequence: sign pattern from sin, magnitudes
    # 1e-3..1e3 from a golden-ratio walk, every 7th step of leaf 0 exactly 0.
    def body(carry, i):
      p, s, max_u = carry
      t = i.astype(jnp.float32)
      x = (t * 0.6180339887) % 1.0
      g = jnp.sin(jnp.arange(8.0) * 1.7 + t) * 10.0 ** (6.0 * x - 3.0)
      g = g.at[0].multiply(jnp.where(i % 7 == 0, 0.0, 1.0)).astype(dtype)
      u, s = tx.update(g, s, p)
      max_u = jnp.maximum(max_u, jnp.max(jnp.abs(u.astype(jnp.float32))))
      return (optax.apply_updates(p, u), s, max_u), None

    p = jnp.zeros(8, dtype)
    (p, s, max_u), _ = jax.lax.scan(body, (p, tx.init(p), jnp.float32(0)), jnp.arange(n))
    return p, s, max_u

  params, state, max_u = run()
  assert _finite((params, state))
  assert int(state[0].count) == n and float(state[0].mu_product) == 0.0
  assert bool(jnp.all(state[0].v >= 0))
  # |m_bar| / sqrt(v_hat) is bounded for NAdam (|g| <= sqrt(v_t / (1 - b2)),
  # |m_t| <= (1 - b1) / sqrt(1 - b2) / sqrt(1 - b1^2 / b2) sqrt(v_t)), about
  # 24 at the defaults: no step ever exceeds it.
  assert 0.0 < float(max_u) <= 24.0 * lr, float(max_u)


def test_mu_product_underflows_to_exactly_zero_and_steps_follow_the_limit():
  # prod_t ~ 0.45^t drops below the smallest float32 after ~110-130 steps
  # (XLA on CPU flushes subnormals). 1 - prod_t is then exactly 1, which is
  # also what float64 gives to the last bit of float32: nothing breaks.
  params, grads = ref.make_problem([(5,), (3, 2)], 300, seed=1)
  tx = optax_nadam.nadam(1e-2)
  core = scale_by_nadam()
  step = jax.jit(core.update)
  state = core.init([jnp.asarray(x) for x in params])
  prods = []
  for gs in grads:
    _, state = step([jnp.asarray(g) for g in gs], state)
    prods.append(float(state.mu_product))
  prods = np.asarray(prods)
  first_zero = int(np.argmax(prods == 0.0))
  assert prods[first_zero] == 0.0 and 80 < first_zero < 200, first_zero
  assert np.all(prods[first_zero:] == 0.0) and np.all(prods[:first_zero] > 0.0)
  ours = ref.run_ours(tx, params, grads)
  expected = ref.reference_nadam(params, grads, lr=1e-2)
  for o_step, e_step in zip(ours, expected):
    for o, e in zip(o_step, e_step):
      np.testing.assert_allclose(o, e, rtol=1e-4, atol=1e-5)


def test_count_saturates_at_int32_max_and_steps_follow_the_formula():
  b1, b2, eps = 0.9, 0.999, 1e-7
  core = scale_by_nadam(b1, b2, eps)
  step = jax.jit(core.update)
  rng = np.random.default_rng(0)
  m = rng.normal(size=4).astype(np.float32)
  v = (rng.normal(size=4) ** 2).astype(np.float32)
  state = ScaleByNadamState(jnp.int32(INT32_MAX - 2), jnp.float32(0.5), jnp.asarray(m),
                            jnp.asarray(v))
  prod, m64, v64 = 0.5, m.astype(np.float64), v.astype(np.float64)
  counts = []
  for _ in range(5):
    g = rng.normal(size=4).astype(np.float32)
    t = float(min(int(state.count) + 1, INT32_MAX))
    updates, state = step(jnp.asarray(g), state)
    counts.append(int(state.count))
    # float64 formula at the saturated t: 0.96 ** (psi t) = 0, mu = b1, 1 - b2^t = 1.
    mu, mu_next = b1 * (1 - 0.5 * 0.96 ** (0.004 * t)), b1 * (1 - 0.5 * 0.96 ** (0.004 * (t + 1)))
    prod *= mu
    m64 = b1 * m64 + (1 - b1) * g
    v64 = b2 * v64 + (1 - b2) * g.astype(np.float64) ** 2
    m_bar = (1 - mu) * g / (1 - prod) + mu_next * m64 / (1 - prod * mu_next)
    np.testing.assert_allclose(updates, m_bar / (np.sqrt(v64 / (1 - b2**t)) + eps),
                               rtol=1e-5, atol=1e-6)
    assert _finite((updates, state))
  assert counts == [INT32_MAX - 1] + [INT32_MAX] * 4


# --- mismatched input: clear errors naming the leaf, at trace time ----------------

WRAPPERS = {
    "scale_by_nadam": lambda: scale_by_nadam(),
    "nadam": lambda: optax_nadam.nadam(1e-3),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax_nadam.nadam(1e-3)),
    "inject_hyperparams": lambda: optax.inject_hyperparams(optax_nadam.nadam)(
        learning_rate=1e-3, b1=0.9),
    "apply_if_finite": lambda: optax.apply_if_finite(optax_nadam.nadam(1e-3), 3),
    "nadamw": lambda: optax_nadam.nadamw(1e-3),
}


def _renamed(g):
  g["blocks"][1] = {"W": g["blocks"][1]["w"]}
  return g


def _set(path, fn):
  def edit(g):
    node = g
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = fn(node[path[-1]])
    return g
  return edit


MISMATCHES = {
    # name: (edit of a correct gradient tree, error type, regex the message must match)
    "shape_nested_list": (_set(["blocks", 1, "w"], lambda x: jnp.ones((2, 3))), ValueError,
                          r"\['blocks'\]\[1\]\['w'\] has shape \(2, 3\).*shape \(2, 2\)"),
    "shape_dict": (_set(["dense", "kernel"], lambda x: jnp.ones((3, 4))), ValueError,
                   r"\['dense'\]\['kernel'\] has shape \(3, 4\).*shape \(4, 3\)"),
    "renamed_leaf": (_renamed, ValueError,
                     r"Only in the gradients: \[\"\['blocks'\]\[1\]\['W'\]\"\]"
                     r".*Only in the optimizer state: \[\"\['blocks'\]\[1\]\['w'\]\"\]"),
    "missing_leaf": (lambda g: {"dense": g["dense"], "blocks": g["blocks"][:1]}, ValueError,
                     r"Only in the optimizer state: .*\['blocks'\]\[1\]\['w'\]"),
    "extra_leaf": (lambda g: dict(g, head=jnp.ones(2)), ValueError,
                   r"Only in the gradients: \[\"\['head'\]\"\]"),
    "int_grads": (_set(["dense", "bias"], lambda x: x.astype(jnp.int32)), TypeError,
                  r"\['dense'\]\['bias'\] has dtype int32; gradients must be floating"),
    "bool_grads": (_set(["blocks", 0], lambda x: x > 0), TypeError,
                   r"\['blocks'\]\[0\] has dtype bool"),
    "complex_grads": (_set(["blocks", 0], lambda x: x.astype(jnp.complex64)), TypeError,
                      r"\['blocks'\]\[0\] has dtype complex64 .* real and complex"),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_gradients_raise_at_trace_time_naming_the_leaf(wrapper, case):
  edit, error, pattern = MISMATCHES[case]
  if wrapper == "chain" and case in ("int_grads", "bool_grads"):
    # clip_by_global_norm sees the gradients before us and fails on the
    # integer/bool dtype with jax's own TypeError (still at trace time).
    error, pattern = TypeError, r"int32|bool"
  tx = WRAPPERS[wrapper]()
  params = _params()
  state = tx.init(params)
  bad = edit(_grads(params, 0))
  # Raised while tracing: eval_shape runs no computation, and neither does
  # lowering under jit; no XLA broadcasting error ever surfaces.
  with pytest.raises(error, match=pattern):
    jax.eval_shape(tx.update, bad, state, params)
  with pytest.raises(error, match=pattern):
    jax.jit(tx.update).lower(bad, state, params)


def test_real_gradients_for_complex_state_raise_naming_the_leaf():
  params = {"z": jnp.zeros((2,), jnp.complex64)}
  tx = optax_nadam.nadam(1e-3)
  with pytest.raises(TypeError, match=r"\['z'\] has dtype float32 .*complex64"):
    jax.jit(tx.update).lower({"z": jnp.ones(2)}, tx.init(params), params)


@pytest.mark.parametrize("grad_dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_lower_precision_gradients_for_float32_state_are_allowed(grad_dtype):
  # Allowed on purpose (a mixed-precision backward pass): the update comes back
  # in the gradient's dtype, the state keeps float32, and the step is the one
  # of the same gradient values given in float32.
  params = _params()
  tx = optax_nadam.nadam(1e-2)
  state = tx.init(params)
  g = jax.tree.map(lambda x: x.astype(grad_dtype), _grads(params, 0))
  updates, new_state = jax.jit(tx.update)(g, state, params)
  chex.assert_trees_all_equal_dtypes(updates, g)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  want, want_state = tx.update(jax.tree.map(lambda x: x.astype(jnp.float32), g), state, params)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x.astype(jnp.float32), updates), want,
                              rtol=1e-2)
  chex.assert_trees_all_close(new_state, want_state, rtol=1e-6)


def _jax_tree_errors_name_key_paths():
  """Whether this jax's tree-mismatch error names the key path (0.10 does; 0.9 and older don't)."""
  try:
    jax.tree.map(lambda a, b: a, {"k": {"w": 1}}, {"k": {"W": 1}})
  except ValueError as err:
    return "['k']" in str(err)
  raise AssertionError("jax.tree.map accepted mismatched trees")


def test_multi_steps_mismatch_is_caught_by_its_accumulator_first():
  # optax.MultiSteps adds the gradients to its accumulator before calling us:
  # a renamed leaf fails there with jax's message (the key path from jax 0.10 on,
  # only the key before: a known limit of MultiSteps); a wrong shape with optax's
  # broadcasting TypeError (shapes only).
  tx = optax.MultiSteps(optax_nadam.nadam(1e-3), every_k_schedule=2)
  params = _params()
  state = tx.init(params)
  where = r"\['blocks'\]\[1\]" if _jax_tree_errors_name_key_paths() else r"'W'"
  with pytest.raises(ValueError, match=where):
    jax.eval_shape(tx.update, _renamed(_grads(params, 0)), state, params)
  bad = _set(["blocks", 1, "w"], lambda x: jnp.ones((2, 3)))(_grads(params, 0))
  with pytest.raises(TypeError, match=r"\(2, 3\).*\(2, 2\)"):
    jax.eval_shape(tx.update, bad, state, params)


# --- hyperparameters at the edges of their range ----------------------------------

EDGES = {
    # b1 = 0: mu_t = 0 and prod = 0, so m_bar = g: update = g / (sqrt(v_hat) + eps).
    "b1=0": dict(b1=0.0),
    # b2 = 0: v = g^2 and 1 - b2^t = 1.
    "b2=0": dict(b2=0.0),
    # Both: update = g / (|g| + eps), a smoothed sign.
    "b1=b2=0": dict(b1=0.0, b2=0.0),
    "eps=0": dict(eps=0.0),
    # psi = 0: mu_t = b1 / 2 at every step.
    "momentum_decay=0": dict(momentum_decay=0.0),
    # psi huge: 0.96 ** (psi t) = 0, mu_t = b1 from the first step.
    "momentum_decay=1e6": dict(momentum_decay=1e6),
    # b1 near 1: 1 - b1 = 1e-6 is taken in float64 from the Python float.
    "b1=0.999999": dict(b1=0.999999),
    "b2=0.999999": dict(b2=0.999999),
    "b1=b2=0.999999,eps=0": dict(b1=0.999999, b2=0.999999, eps=0.0),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_edge_hyperparameters_follow_the_float64_math(name):
  hp = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-7, momentum_decay=0.004) | EDGES[name]
  params, grads = ref.make_problem(ref.SHAPES["mixed"], 30, seed=2)
  tx = optax_nadam.nadam(hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                         momentum_decay=hp["momentum_decay"])
  ours = ref.run_ours(tx, params, grads)
  expected = ref.reference_nadam(params, grads, **hp)
  for o_step, e_step in zip(ours, expected):
    for o, e in zip(o_step, e_step):
      np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5)


def test_b1_zero_update_is_the_gradient_over_the_rms():
  g = jnp.asarray([3.0, -0.5, 1e-3])
  core = scale_by_nadam(b1=0.0, b2=0.0, eps=0.0)
  state = core.init(g)
  for _ in range(3):
    updates, state = core.update(g, state)
    np.testing.assert_array_equal(updates, jnp.sign(g))
  assert float(state.mu_product) == 0.0


@pytest.mark.parametrize("traced", [False, True], ids=["concrete", "inject_hyperparams"])
def test_eps_zero_with_zero_gradients_gives_zero_not_nan(traced):
  if traced:
    tx = optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=1e-2, eps=0.0)
  else:
    tx = optax_nadam.nadam(1e-2, eps=0.0)
  step = _step(tx)
  params = _params()
  p, s = params, tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):
    p, s, updates = step(p, s, zeros)
    chex.assert_trees_all_equal(updates, zeros)
  # A real gradient later gives the ordinary step; a leaf still at zero stays 0.
  g = dict(_grads(params, 0), dense=zeros["dense"])
  p, s, updates = step(p, s, g)
  assert _finite((p, s))
  chex.assert_trees_all_equal(updates["dense"], zeros["dense"])
  assert all(bool(jnp.all(u != 0)) for u in jax.tree.leaves(updates["blocks"]))


def test_eps_zero_with_squared_gradient_underflow_steps_zero():
  # |g| = 1e-30: g^2 underflows to 0 in float32, so v = 0 and the exact step
  # (about lr, against g) has a 0 denominator. With eps = 0 we take 0 (never
  # inf or NaN); with any eps >= 1e-29 the step is the ordinary g / eps one.
  g = jnp.asarray([1e-30, -1e-30])
  updates, _ = optax_nadam.nadam(1e-2, eps=0.0).update(g, optax_nadam.nadam(eps=0.0).init(g))
  np.testing.assert_array_equal(updates, [0.0, 0.0])
  updates, _ = optax_nadam.nadam(1e-2, eps=1e-7).update(g, optax_nadam.nadam().init(g))
  assert _finite(updates) and float(updates[0]) < 0 < float(updates[1])


def test_nan_gradient_still_propagates_when_eps_is_zero():
  g = jnp.asarray([jnp.nan, 1.0])
  tx = optax_nadam.nadam(1e-2, eps=0.0)
  updates, state = tx.update(g, tx.init(g))
  assert jnp.isnan(updates[0]) and jnp.isfinite(updates[1])
  assert jnp.isnan(state[0].v[0])
