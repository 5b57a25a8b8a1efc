"""`optax_nadam.grouped`: the many-small-leaves path follows the plain path.

Not bit for bit: XLA:CPU vectorizes one long buffer differently from a short
leaf's tail, so a few elements differ by an ulp per step. The tests bound that
at float32 rounding (16 ulp in the params after 25 steps).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nadam
from optax_nadam import safety

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core

STEPS = 25


def _params():
  """Small f32 leaves (1-D, 2-D, scalar), two small bf16, one lone f16, two big leaves."""
  rng = np.random.default_rng(0)
  params = {f"bias{i:02d}": jnp.asarray(rng.standard_normal(7 + i), jnp.float32)
            for i in range(12)}
  params["norm"] = {"scale": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),
                    "t": jnp.asarray(rng.standard_normal(()), jnp.float32)}
  params["h1"] = jnp.asarray(rng.standard_normal(6), jnp.bfloat16)
  params["h2"] = jnp.asarray(rng.standard_normal((2, 3)), jnp.bfloat16)
  params["lone_f16"] = jnp.asarray(rng.standard_normal(4), jnp.float16)
  params["kernel"] = jnp.asarray(rng.standard_normal((64, 80)), jnp.float32)
  params["embed"] = jnp.asarray(rng.standard_normal(5000), jnp.float32)
  return params


def _grads(params, t):
  return jax.tree.map(lambda p: (jnp.sin(3.0 * p.astype(jnp.float32) + t)
                                 * 10.0 ** (t % 3 - 1)).astype(p.dtype), params)


def _run(tx, params, steps=STEPS):
  state = tx.init(params)

  @jax.jit
  def step(p, s, t):
    u, s = tx.update(_grads(p, t), s, p)
    return optax.apply_updates(p, u), s

  for t in range(steps):
    params, state = step(params, state, t)
  return params, state


TXS = {
    "nadam": lambda: optax_nadam.nadam(1e-2),
    "nadam_mu_bf16": lambda: optax_nadam.nadam(1e-2, mu_dtype=jnp.bfloat16),
    "nadamw": lambda: optax_nadam.nadamw(1e-2, weight_decay=0.1),
    "nadam_eps0": lambda: optax_nadam.nadam(1e-2, eps=0.0, momentum_decay=1.0),
    "inject": lambda: optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=1e-2, b1=0.8),
    "schedule": lambda: optax_nadam.nadam(optax.linear_schedule(1e-2, 1e-3, 10)),
    "optax_adam": lambda: optax.adam(1e-2),
}


def _max_ulps(a, b):
  """Largest distance in units of a's last place over float32 leaves."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if x.dtype == jnp.float32 and x.size:
      x, y = np.asarray(x), np.asarray(y)
      worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y) / np.spacing(x))))
  return worst


def _assert_follows(group, plain, max_ulps=16):
  chex.assert_trees_all_equal_shapes_and_dtypes(group, plain)
  assert _max_ulps(plain, group) <= max_ulps
  # bf16/f16 leaves: within one rounding of their own dtype.
  chex.assert_trees_all_close(group, plain, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("name", list(TXS))
def test_follows_the_plain_tree_to_float32_rounding(name):
  params = _params()
  plain_p, plain_s = _run(TXS[name](), params)
  group_p, group_s = _run(optax_nadam.grouped(TXS[name]()), params)
  _assert_follows(group_p, plain_p)
  unpacked = optax_nadam.ungroup_state(group_s, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(unpacked, plain_s)
  for u, q in zip(jax.tree.leaves(unpacked), jax.tree.leaves(plain_s)):
    rtol = 1e-5 if u.dtype in (jnp.float32, jnp.int32) else 1e-2  # one bf16 rounding
    # atol: the gradients depend on the params, whose last bits differ between the two
    # fusions, so an O(1) moment near 0 after cancellation differs by a few 1e-7 (up to
    # 1.6e-6 measured, before and after the float32-consistent scalars), not 1e-5 of itself.
    atol = 4e-6 if u.dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(q, np.float64),
                               rtol=rtol, atol=atol)
  # The params really moved, far more than the tolerance.
  assert np.max(np.abs(np.asarray(plain_p["bias03"] - params["bias03"]))) > 1e-2


def test_chained_after_global_norm_clipping():
  params = _params()
  clip = lambda: optax.clip_by_global_norm(0.5)  # noqa: E731
  plain_p, _ = _run(optax.chain(clip(), optax_nadam.nadam(1e-2)), params)
  group_p, _ = _run(optax.chain(clip(), optax_nadam.grouped(optax_nadam.nadam(1e-2))), params)
  _assert_follows(group_p, plain_p)


def test_masked_weight_decay_goes_outside_the_group():
  params = _params()
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  plain_p, _ = _run(optax_nadam.nadamw(1e-2, weight_decay=0.1, mask=mask), params)
  outside = optax.chain(optax_nadam.grouped(optax_nadam.scale_by_nadam()),
                        optax.add_decayed_weights(0.1, mask), optax.scale_by_learning_rate(1e-2))
  _assert_follows(_run(outside, params)[0], plain_p)
  # Inside, the mask sees 1-D groups: the grouped 2-D leaf loses its decay.
  inside_p, _ = _run(optax_nadam.grouped(
      optax_nadam.nadamw(1e-2, weight_decay=0.1, mask=mask)), params)
  assert _max_ulps(plain_p["norm"]["scale"], inside_p["norm"]["scale"]) > 1000


def test_layout_packs_small_leaves_per_dtype_and_keeps_big_ones():
  params = _params()
  state = optax_nadam.grouped(optax_nadam.nadam(), max_leaf_size=4096).init(params)
  m = state.inner[0].m
  assert isinstance(m, optax_nadam.GroupedLeaves)
  small_f32 = sum(x.size for x in jax.tree.leaves(params)
                  if x.dtype == jnp.float32 and x.size <= 4096)
  assert sorted(m.groups) == ["bfloat16", "float32"]
  assert m.groups["float32"].shape == (small_f32,)
  assert m.groups["bfloat16"].shape == (12,)
  # The lone f16 leaf (no partner of its dtype) and the two big leaves stay whole.
  assert sorted(x.shape for x in m.leaves) == [(4,), (64, 80), (5000,)]
  # A jitted step now carries 6 optimizer arrays instead of 2 * 19 + 2.
  assert len(jax.tree.leaves(state)) == 2 + 2 * (2 + 3)
  assert len(jax.tree.leaves(optax_nadam.nadam().init(params))) == 2 + 2 * 19


def test_max_leaf_size_decides_what_is_grouped():
  params = _params()
  m = optax_nadam.grouped(optax_nadam.nadam(), max_leaf_size=5000).init(params).inner[0].m
  assert m.groups["float32"].shape[0] >= 5000  # the 5000-element leaf joins its group
  m = optax_nadam.grouped(optax_nadam.nadam(), max_leaf_size=1).init(params).inner[0].m
  assert m.groups == {}  # only the scalar leaf is that small, and it has no partner


def test_one_trace_for_many_steps():
  params = _params()
  tx = optax_nadam.grouped(optax_nadam.nadam(1e-2))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, t):
    u, s = tx.update(_grads(p, t), s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for t in range(5):
    params, state = step(params, state, t)


@pytest.mark.slow
def test_group_state_inverts_ungroup_state_and_continues():
  params = _params()
  plain_tx, group_tx = optax_nadam.nadam(1e-2), optax_nadam.grouped(optax_nadam.nadam(1e-2))
  mid_p, plain_s = _run(plain_tx, params, steps=10)
  packed = optax_nadam.group_state(plain_s, mid_p)
  chex.assert_trees_all_equal_structs(packed, group_tx.init(mid_p))
  chex.assert_trees_all_equal(optax_nadam.ungroup_state(packed, mid_p), plain_s)
  # A plain run's state (a checkpoint, an import from torch) continues grouped.
  state = packed
  p_group, p_plain, s_plain = mid_p, mid_p, plain_s
  for t in range(10, 15):
    g = _grads(p_plain, t)
    u, s_plain = plain_tx.update(g, s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
    u, state = group_tx.update(g, state, p_group)
    p_group = optax.apply_updates(p_group, u)
  _assert_follows(p_group, p_plain)


def test_npz_round_trip_of_a_grouped_state():
  params = _params()
  tx = optax_nadam.grouped(optax_nadam.nadam(1e-2))
  _, state = _run(tx, params, steps=3)
  arrays = safety.to_arrays(state)
  assert any("groups['float32']" in k for k in arrays), sorted(arrays)[:5]
  back = safety.from_arrays(arrays, like=tx.init(params))
  chex.assert_trees_all_equal(back, state)


def test_bad_input_is_refused_with_the_reason():
  params = _params()
  for bad in [0, -3, 2.5, True, None]:
    with pytest.raises(ValueError, match="max_leaf_size must be a positive integer"):
      optax_nadam.grouped(optax_nadam.nadam(), max_leaf_size=bad)
  tx = optax_nadam.grouped(optax_nadam.nadam())
  state = tx.init(params)
  other = dict(params, bias00=jnp.zeros(3))
  with pytest.raises(ValueError, match="float32 group holds .* elements"):
    optax_nadam.ungroup_state(state, other)
  with pytest.raises(ValueError, match=r"state's leaf for \['embed'\] has shape \(5000,\)"):
    optax_nadam.ungroup_state(state, dict(params, embed=jnp.zeros(4097)))
  with pytest.raises(ValueError, match="shape"):
    tx.update(_grads(other, 0), state, other)
  f16_grads = jax.tree.map(lambda g: g.astype(jnp.float16), _grads(params, 0))
  with pytest.raises(ValueError, match=r"dtype groups \['float16'\], the state was grouped as"):
    tx.update(f16_grads, state, params)
  with pytest.raises(ValueError, match="two or more leaves"):
    optax_nadam.group_state(optax_nadam.nadam().init(jnp.ones(3)), jnp.ones(3))


def test_docstring_examples_run():
  import doctest
  import importlib

  # The package exports the function `grouped`, which shadows the module's name.
  grouped_module = importlib.import_module("optax_nadam.grouped")
  failures, tried = doctest.testmod(grouped_module, raise_on_error=False)
  assert tried >= 2 and failures == 0
