"""interop._state: the peer-neutral state builder, one job a function."""

from typing import Any, NamedTuple

import numpy as np
import optax
import pytest

import optax_nadam
from optax_nadam.interop import _state as build
from optax_nadam.interop._state import PeerExtras, PeerHyperparams, PeerSlot, build_state

PARAMS = {"a": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _slots(count=4, mu_product=0.3):
  rng = np.random.default_rng(0)
  return [PeerSlot(f"peer variable {i}", count, mu_product,
                   rng.normal(size=p.shape).astype(np.float32),
                   rng.uniform(size=p.shape).astype(np.float32), 0.9, 0.004)
          for i, p in enumerate(PARAMS.values())]


class _WithEma(NamedTuple):
  inner: Any
  ema: Any


def _ema_tx():
  """Any tx with a params-shaped ``ema`` field: no import of the Keras front needed."""
  tx = optax_nadam.nadam(1e-2)
  return optax.GradientTransformation(
      lambda p: _WithEma(tx.init(p), optax.tree.zeros_like(p)),
      lambda g, s, p=None: (lambda u, i: (u, s._replace(inner=i)))(*tx.update(g, s.inner, p)))


def test_ema_is_found_by_shape_not_by_class():
  ema = [np.full(p.shape, 7.0, np.float32) for p in PARAMS.values()]
  state = build_state(_ema_tx(), PARAMS, _slots(), sync_schedules=True, check_schedule=True,
                      extras=PeerExtras(ema=ema))
  np.testing.assert_array_equal(state.ema["a"], ema[0])
  with pytest.warns(UserWarning, match="EMA averages .* tx has no place"):
    build_state(optax_nadam.nadam(1e-2), PARAMS, _slots(), sync_schedules=True,
                check_schedule=True, extras=PeerExtras(ema=ema))


def test_count_mismatch_and_mu_product_are_checked_before_anything_else():
  with pytest.raises(ValueError, match="slots for 1 variables but params has 2 leaves"):
    build_state(optax_nadam.nadam(), PARAMS, _slots()[:1], sync_schedules=True,
                check_schedule=True)
  with pytest.raises(ValueError, match=r"peer variable 0 \(params leaf \['a'\]\): step count 0 "
                     "but mu_product 0.3"):
    build_state(optax_nadam.nadam(), PARAMS, _slots(count=0), sync_schedules=True,
                check_schedule=True)


def test_hyperparams_are_checked_when_given_and_follow_check_schedule():
  hyper = [PeerHyperparams(0.5, 0.9, 0.999, 1e-7, 0.004)] * 2
  kw = dict(sync_schedules=True, hyperparams=hyper)
  with pytest.raises(ValueError, match="The peer's hyperparameters: learning_rate=0.5, "):
    build_state(optax_nadam.nadam(1e-2), PARAMS, _slots(), check_schedule=True, **kw)
  build_state(optax_nadam.nadam(1e-2), PARAMS, _slots(), check_schedule=False, **kw)
  build_state(optax_nadam.nadam(1e-2), PARAMS, _slots(), check_schedule=True,
              check_hyperparams=False, **kw)
  build_state(optax_nadam.nadam(0.5), PARAMS, _slots(), check_schedule=True, **kw)


def test_from_keras_names_stay_importable():
  for name in ("PeerExtras", "PeerSlot", "build_state", "param_paths", "read_state", "to_scalar",
               "to_numpy", "PeerHyperparams"):
    assert hasattr(build, name), name
