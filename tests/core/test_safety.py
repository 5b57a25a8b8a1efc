"""Checkpoint safety: `safety.check_state`, `to_arrays`, `from_arrays`.

A plain numpy ``.npz`` round trip (``allow_pickle=False``) resumes
bit-identically, bfloat16 moments survive it, and a state from another tree,
with a wrong shape/dtype, NaN, a mu-product outside [0, 1] or a negative count
is refused with an error naming the leaf. (orbax is covered by
tests/distributed/test_checkpoint.py.)
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


def _params(dtype=jnp.float32):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  return {
      "dense": {"kernel": jax.random.normal(k[0], (4, 3)).astype(dtype),
                "bias": jnp.zeros((3,), dtype)},
      "blocks": [jax.random.normal(k[1], (5,)).astype(dtype),
                 {"w": jax.random.normal(k[2], (2, 2)).astype(dtype)}],
  }


def _grads(params, i):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(100 + i), len(leaves))
  return treedef.unflatten(
      [jax.random.normal(k, x.shape).astype(x.dtype) for k, x in zip(keys, leaves)])


def _train(tx, params, state, steps, start):
  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for i in range(start, start + steps):
    params, state = step(params, state, _grads(params, i))
  return params, state


OPTIMIZERS = {
    "nadam_f32": (lambda: optax_nadam.nadam(1e-2), jnp.float32),
    "nadam_bf16_params": (lambda: optax_nadam.nadam(1e-2), jnp.bfloat16),
    "nadam_mu_bf16": (lambda: optax_nadam.nadam(1e-2, mu_dtype=jnp.bfloat16), jnp.float32),
    "nadamw_apply_if_finite": (
        lambda: optax.apply_if_finite(optax_nadam.nadamw(1e-2), max_consecutive_errors=3),
        jnp.float32),
    "inject_hyperparams": (
        lambda: optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=1e-2, b1=0.9),
        jnp.float32),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_npz_round_trip_resumes_bit_identically(name, tmp_path):
  make_tx, dtype = OPTIMIZERS[name]
  tx = make_tx()
  params = _params(dtype)
  p, s = _train(tx, params, tx.init(params), 5, start=0)

  path = tmp_path / "ckpt.npz"
  np.savez(path, **{"params" + k: v for k, v in safety.to_arrays(p).items()},
           **{"opt_state" + k: v for k, v in safety.to_arrays(s).items()})
  with np.load(path, allow_pickle=False) as f:
    loaded = dict(f)
  # A fresh process knows only the model: the reference costs no memory.
  like_state = jax.eval_shape(tx.init, params)
  restored_p = safety.from_arrays(
      {k[len("params"):]: v for k, v in loaded.items() if k.startswith("params")}, params)
  restored_s = safety.from_arrays(
      {k[len("opt_state"):]: v for k, v in loaded.items() if k.startswith("opt_state")},
      like_state)
  chex.assert_trees_all_equal_shapes_and_dtypes(restored_s, s)

  resumed = _train(tx, restored_p, restored_s, 5, start=5)
  uninterrupted = _train(tx, p, s, 5, start=5)
  chex.assert_trees_all_equal(resumed, uninterrupted)  # bit for bit


def test_bfloat16_moments_survive_npz(tmp_path):
  # numpy stores bfloat16 as raw 2-byte voids ('|V2'); from_arrays views
  # them back as bfloat16 (the reference says which dtype each leaf has).
  tx = optax_nadam.nadam(1e-2, mu_dtype=jnp.bfloat16)
  params = _params()
  _, state = _train(tx, params, tx.init(params), 3, start=0)
  np.savez(tmp_path / "s.npz", **safety.to_arrays(state))
  with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
    loaded = dict(f)
  key = "[0].m['dense']['kernel']"
  assert loaded[key].dtype.kind == "V" and loaded[key].dtype.itemsize == 2
  restored = safety.from_arrays(loaded, jax.eval_shape(tx.init, params))
  assert restored[0].m["dense"]["kernel"].dtype == jnp.bfloat16
  chex.assert_trees_all_equal(restored, state)


def test_to_arrays_keys_are_leaf_paths():
  tx = optax_nadam.nadam(1e-2)
  arrays = safety.to_arrays(tx.init(_params()))
  assert set(arrays) == {
      "[0].count", "[0].mu_product",
      "[0].m['blocks'][0]", "[0].m['blocks'][1]['w']", "[0].m['dense']['bias']",
      "[0].m['dense']['kernel']",
      "[0].v['blocks'][0]", "[0].v['blocks'][1]['w']", "[0].v['dense']['bias']",
      "[0].v['dense']['kernel']",
  }
  assert all(isinstance(x, np.ndarray) for x in arrays.values())
  assert safety.to_arrays(jnp.ones(2)).keys() == {"<root>"}


def _trained_state():
  tx = optax_nadam.nadam(1e-2)
  params = _params()
  _, state = _train(tx, params, tx.init(params), 2, start=0)
  return tx, params, state


def _other_params(edit):
  p = _params()
  edit(p)
  return p


# Checkpoints from a different model: (edit of the params the checkpoint was
# saved from, regex the error must match; it names the offending leaves).
OTHER_TREES = {
    "missing_leaf": (lambda p: p["dense"].pop("bias"),
                     r"Missing: .*\[0\]\.m\['dense'\]\['bias'\]"),
    "extra_leaf": (lambda p: p.update(head=jnp.zeros(2)),
                   r"Not in the reference: .*\[0\]\.m\['head'\]"),
    "renamed_leaf": (lambda p: p["blocks"].__setitem__(1, {"W": p["blocks"][1]["w"]}),
                     r"Missing: .*\['blocks'\]\[1\]\['w'\].*Not in the reference: "
                     r".*\['blocks'\]\[1\]\['W'\]"),
    # Same number of leaves and shapes, other names: positional unflattening
    # would accept it silently.
    "same_count_other_paths": (lambda p: p.update(dense={"k": p["dense"]["kernel"],
                                                         "b": p["dense"]["bias"]}),
                               r"Missing: .*\['dense'\]\['bias'\]"),
}


@pytest.mark.parametrize("case", list(OTHER_TREES))
def test_checkpoint_from_another_tree_is_refused_naming_the_leaves(case):
  edit, pattern = OTHER_TREES[case]
  tx = optax_nadam.nadam(1e-2)
  other_state = tx.init(_other_params(edit))
  like = jax.eval_shape(tx.init, _params())
  with pytest.raises(ValueError, match=pattern):
    safety.from_arrays(safety.to_arrays(other_state), like)
  # check_state on the unflattened trees says the same by paths.
  with pytest.raises(ValueError, match=r"does not have the reference's tree structure"):
    safety.check_state(other_state, like)


def test_state_of_another_optimizer_is_refused():
  params = _params()
  adam_state = optax.adam(1e-2).init(params)
  with pytest.raises(ValueError, match=r"Only in the state: .*\.mu\['dense'\]"):
    safety.check_state(adam_state, jax.eval_shape(optax_nadam.nadam(1e-2).init, params))


def _corrupt(key, value):
  def edit(arrays):
    arrays[key] = value
    return arrays
  return edit


BAD_LEAVES = {
    "wrong_shape": (_corrupt("[0].m['dense']['kernel']", np.zeros((3, 4), np.float32)),
                    r"\[0\]\.m\['dense'\]\['kernel'\] has shape \(3, 4\); the reference "
                    r"has \(4, 3\)"),
    "wrong_dtype": (_corrupt("[0].v['blocks'][0]", np.zeros(5, np.float64)),
                    r"\[0\]\.v\['blocks'\]\[0\] has dtype float64; the reference has float32"),
    "wrong_itemsize_void": (_corrupt("[0].v['blocks'][0]", np.zeros(5, "V8")),
                            r"\[0\]\.v\['blocks'\]\[0\] has dtype \|V8"),
    "nan_in_m": (_corrupt("[0].m['blocks'][1]['w']", np.full((2, 2), np.nan, np.float32)),
                 r"\[0\]\.m\['blocks'\]\[1\]\['w'\] holds NaN or Inf"),
    "inf_in_v": (_corrupt("[0].v['dense']['bias']", np.full(3, np.inf, np.float32)),
                 r"\[0\]\.v\['dense'\]\['bias'\] holds NaN or Inf"),
    "mu_product_above_one": (_corrupt("[0].mu_product", np.float32(1.5)),
                             r"\[0\]\.mu_product is 1\.5"),
    "mu_product_negative": (_corrupt("[0].mu_product", np.float32(-0.25)),
                            r"\[0\]\.mu_product is -0\.25"),
    "negative_count": (_corrupt("[0].count", np.int32(-3)), r"\[0\]\.count is -3"),
    "count_wrong_dtype": (_corrupt("[0].count", np.int64(3)),
                          r"\[0\]\.count has dtype int64; the reference has int32"),
}


@pytest.mark.parametrize("case", list(BAD_LEAVES))
def test_bad_leaf_is_refused_naming_it(case):
  corrupt, pattern = BAD_LEAVES[case]
  tx, params, state = _trained_state()
  like = jax.eval_shape(tx.init, params)
  arrays = corrupt(safety.to_arrays(state))
  with pytest.raises(ValueError, match=pattern):
    safety.from_arrays(arrays, like)


def test_finite_false_accepts_nan_but_still_checks_the_tree():
  tx, params, state = _trained_state()
  arrays = safety.to_arrays(state)
  arrays["[0].m['dense']['bias']"] = np.full(3, np.nan, np.float32)
  like = tx.init(params)
  restored = safety.from_arrays(arrays, like, finite=False)
  assert np.isnan(restored[0].m["dense"]["bias"]).all()
  del arrays["[0].count"]
  with pytest.raises(ValueError, match=r"Missing: \['\[0\]\.count'\]"):
    safety.from_arrays(arrays, like, finite=False)


def test_check_state_returns_its_argument_and_accepts_saturated_values():
  tx, params, state = _trained_state()
  # v at the float32 max (saturated by a huge gradient) is finite and valid;
  # mu_product 0 (underflowed) and count at int32 max (saturated) too.
  saturated = (
      state[0]._replace(
          count=jnp.int32(np.iinfo(np.int32).max), mu_product=jnp.float32(0.0),
          v=jax.tree.map(lambda v: jnp.full_like(v, jnp.finfo(jnp.float32).max), state[0].v)),
      state[1])
  assert safety.check_state(saturated, tx.init(params)) is saturated


def test_check_state_under_jit_checks_structure_shapes_and_dtypes_only():
  tx, params, state = _trained_state()
  like = jax.eval_shape(tx.init, params)

  @jax.jit
  def restore(s):
    return safety.check_state(s, like)

  chex.assert_trees_all_equal(restore(state), state)
  bad = (state[0]._replace(m=dict(state[0].m, dense={"kernel": jnp.zeros((3, 4)),
                                                      "bias": jnp.zeros(3)})), state[1])
  with pytest.raises(ValueError, match=r"\[0\]\.m\['dense'\]\['kernel'\] has shape \(3, 4\)"):
    restore(bad)
