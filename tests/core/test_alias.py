"""`nadam` and `nadamw`: thin chains over `scale_by_nadam`."""

import doctest

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optax_nadam
from optax_nadam import alias

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core


def _params():
  return {"w": jnp.arange(6.0).reshape(2, 3) - 2.0, "b": jnp.array([0.5, -1.0])}


def _grads(seed):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {"w": jax.random.normal(k1, (2, 3)), "b": jax.random.normal(k2, (2,))}


def test_docstring_examples_run():
  failures, tried = doctest.testmod(alias, raise_on_error=False)
  assert tried > 0 and failures == 0


def test_nadam_is_scale_by_nadam_times_minus_learning_rate():
  params = _params()
  tx, core = optax_nadam.nadam(0.03, b1=0.8), optax_nadam.scale_by_nadam(b1=0.8)
  s_tx, s_core = tx.init(params), core.init(params)
  for i in range(5):
    u, s_tx = tx.update(_grads(i), s_tx, params)
    d, s_core = core.update(_grads(i), s_core)
    chex.assert_trees_all_close(u, jax.tree.map(lambda x: -0.03 * x, d), rtol=1e-6)


def test_defaults_are_the_seeds():
  import inspect

  sig = inspect.signature(optax_nadam.nadam)
  defaults = {k: v.default for k, v in sig.parameters.items()}
  assert defaults == dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-7,
                          eps_root=0.0, momentum_decay=0.004, mu_dtype=None)
  assert inspect.signature(optax_nadam.nadamw).parameters["weight_decay"].default == 1e-4


def test_nadamw_shrinks_params_by_lr_times_weight_decay():
  params = _params()
  lr, wd = 0.1, 0.5
  tx_w = optax_nadam.nadamw(lr, weight_decay=wd)
  tx = optax_nadam.nadam(lr)
  u_w, _ = tx_w.update(_grads(0), tx_w.init(params), params)
  u, _ = tx.update(_grads(0), tx.init(params), params)
  chex.assert_trees_all_close(
      u_w, jax.tree.map(lambda a, p: a - lr * wd * p, u, params), rtol=1e-6)


def test_nadamw_mask_limits_weight_decay():
  params = _params()
  tx = optax_nadam.nadamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})
  plain = optax_nadam.nadam(0.1)
  u_m, _ = tx.update(_grads(0), tx.init(params), params)
  u, _ = plain.update(_grads(0), plain.init(params), params)
  chex.assert_trees_all_close(u_m["b"], u["b"])
  chex.assert_trees_all_close(u_m["w"], u["w"] - 0.1 * 0.5 * params["w"], rtol=1e-6)
  mask_fn = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  u_f, _ = optax_nadam.nadamw(0.1, weight_decay=0.5, mask=mask_fn).update(
      _grads(0), tx.init(params), params)
  chex.assert_trees_all_close(u_f, u_m)


def test_nadamw_requires_params():
  params = _params()
  tx = optax_nadam.nadamw(0.1)
  with pytest.raises(ValueError):
    tx.update(_grads(0), tx.init(params))


def test_learning_rate_may_be_a_jax_scalar_or_schedule():
  params = _params()
  for lr in (jnp.asarray(0.01), optax.constant_schedule(0.01), 0.01):
    tx = optax_nadam.nadam(lr)
    u, _ = tx.update(_grads(0), tx.init(params), params)
    ref = optax_nadam.nadam(0.01)
    want, _ = ref.update(_grads(0), ref.init(params), params)
    chex.assert_trees_all_close(u, want)


def test_public_api():
  assert set(optax_nadam.__all__) == {
      "ScaleByNadamState", "nadam", "nadamw", "scale_by_nadam",
      "grouped", "GroupedLeaves", "GroupedState", "group_state", "ungroup_state"}
  assert all(hasattr(optax_nadam, name) for name in optax_nadam.__all__)
  assert isinstance(optax_nadam.__version__, str)
