"""State migration between optax_nadam and the real peers (optax_nadam.interop).

Every parity test runs the installed peer for N steps, imports its state,
then runs M more steps in the peer and in optax on the same gradients: the
parameters must agree to float32 rounding (<= 1e-5 of the parameter scale).
A control run from a fresh ``tx.init`` shows the same check fails without the
import. `pytest -s tests/interop/test_torch.py` prints every measured gap.
"""


import chex
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
import torch

import optax_nadam
from optax_nadam import interop, safety
from optax_nadam import keras as okeras
from tests.helpers.reference import continue_optax, gap, make_problem, max_rel_gap, param_scale
from tests.helpers.torch_runs import TorchRun

SHAPES = [(7, 5), (11,), (2, 3, 4), ()]
N, M = 30, 30
LR = 1e-2
TOL = 1e-5  # fp32 rounding, relative to each parameter's scale
CLIP = 0.05  # below the gradients' global norm (~0.1): clipping is active


def _problem(seed=3):
  return make_problem(SHAPES, N + M, seed=seed)


# ------------------------------------------------------------------------------ torch


def _inv_time(c):
  return 1.0 / (1.0 + 0.1 * c)


TORCH_CASES = {
    "default": (dict(), lambda: optax_nadam.nadam(LR, eps=1e-8)),
    "coupled_weight_decay": (
        dict(weight_decay=0.05),
        lambda: optax.chain(optax.add_decayed_weights(0.05), optax_nadam.nadam(LR, eps=1e-8))),
    "decoupled_weight_decay": (
        dict(weight_decay=0.05, decoupled_weight_decay=True),
        lambda: optax_nadam.nadamw(LR, eps=1e-8, weight_decay=0.05)),
    "clip_by_global_norm": (
        dict(clip=CLIP),
        lambda: optax.chain(optax.clip_by_global_norm(CLIP), optax_nadam.nadam(LR, eps=1e-8))),
    "inject_hyperparams": (
        dict(), lambda: optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=LR, eps=1e-8)),
    "lr_schedule": (
        dict(schedule=_inv_time),
        lambda: optax_nadam.nadam(lambda c: LR * _inv_time(c), eps=1e-8)),
    "param_groups": (
        dict(groups=[([0, 1], {}), ([2, 3], dict(lr=LR / 3))]),
        lambda: optax.multi_transform(
            {"a": optax_nadam.nadam(LR, eps=1e-8), "b": optax_nadam.nadam(LR / 3, eps=1e-8)},
            ["a", "a", "b", "b"])),
    "keras_front": (dict(), lambda: okeras.Nadam(learning_rate=LR, epsilon=1e-8)),
}


# state_dict() input goes through the same reader: two cases suffice.
TORCH_RUNS = [(c, False) for c in sorted(TORCH_CASES)] + [
    ("default", True), ("param_groups", True)]


@pytest.mark.parametrize("case,from_state_dict", TORCH_RUNS)
def test_torch_import_continues_trajectory(case, from_state_dict):
  kwargs, make_tx = TORCH_CASES[case]
  params, grads = _problem()
  peer = TorchRun(params, **kwargs)
  peer.run(grads[:N])
  mid = peer.params()
  tx = make_tx()
  source = peer.opt.state_dict() if from_state_dict else peer.opt
  state = interop.state_from_torch(source, tx, mid)
  safety.check_state(state, tx.init(mid))  # the tree, shapes and dtypes of tx.init
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, f"import from torch, {case}") <= TOL
  if case == "default" and not from_state_dict:
    fresh = continue_optax(tx, tx.init(mid), mid, grads[N:])
    assert gap(fresh, theirs, "control: fresh tx.init instead of torch's state") > 100 * TOL
  if case == "lr_schedule":
    with pytest.raises(ValueError, match=r"not the peer's .*The peer's hyperparameters: "
                       r"learning_rate=0\.001429, "):
      interop.state_from_torch(source, tx, mid, sync_schedules=False)  # schedule at step 0
    unsynced = interop.state_from_torch(source, tx, mid, sync_schedules=False,
                                        check_hyperparams=False)
    drift = continue_optax(tx, unsynced, mid, grads[N:])
    assert max_rel_gap(drift, theirs, param_scale(theirs)) > 100 * TOL


# ------------------------------------------------------------------------------ Keras 3


class _Keras3:
  """keras.optimizers.Nadam (jax backend) on keras.Variables."""

  def __init__(self, params, **kwargs):
    self.vs = [keras.Variable(np.array(x)) for x in params]
    self.opt = keras.optimizers.Nadam(**{"learning_rate": LR, **kwargs})
    self.opt.build(self.vs)

  def run(self, grads):
    """Keras 3's jax training path: jitted `stateless_apply`, then written back."""
    apply = jax.jit(self.opt.stateless_apply)
    opt_vars = [v.value for v in self.opt.variables]
    train_vars = [v.value for v in self.vs]
    history = []
    for gs in grads:
      train_vars, opt_vars = apply(opt_vars, [jnp.asarray(g) for g in gs], train_vars)
      history.append([np.array(x) for x in train_vars])
    for var, x in zip(self.opt.variables, opt_vars):
      var.assign(x)
    for var, x in zip(self.vs, train_vars):
      var.assign(x)
    return history

  def params(self):
    return [np.array(v.numpy()) for v in self.vs]


def _keras3_config(peer):
  return okeras.Nadam.from_config(peer.opt.get_config())


KERAS3_CASES = {
    # Keras 3's Nadam is the seed's with psi = 1: tx needs momentum_decay=1.0.
    "default": (dict(), lambda peer: optax_nadam.nadam(LR, momentum_decay=1.0)),
    "global_clipnorm": (
        dict(global_clipnorm=CLIP),
        lambda peer: optax.chain(optax.clip_by_global_norm(CLIP),
                                 optax_nadam.nadam(LR, momentum_decay=1.0))),
    "lr_schedule": (
        dict(learning_rate={"class_name": "ExponentialDecay", "config": dict(
            initial_learning_rate=LR, decay_steps=10, decay_rate=0.5)}),
        lambda peer: optax_nadam.nadam(optax.exponential_decay(LR, 10, 0.5),
                                       momentum_decay=1.0)),
    "keras_front_from_config": (dict(), _keras3_config),
    "keras_front_weight_decay": (dict(weight_decay=0.05), _keras3_config),
    # Imported 31 % 3 = 1 call into an accumulation cycle, EMA on: the front
    # holds both (optax.MultiSteps accumulators, the EMA tree).
    "keras_front_accumulation_ema": (
        dict(gradient_accumulation_steps=3, use_ema=True), _keras3_config),
}


@pytest.mark.parametrize("case", sorted(KERAS3_CASES))
def test_keras3_import_continues_trajectory(case):
  kwargs, make_tx = KERAS3_CASES[case]
  if isinstance(kwargs.get("learning_rate"), dict):
    kwargs = dict(kwargs, learning_rate=keras.optimizers.schedules.deserialize(
        kwargs["learning_rate"]))
  n = N + 1 if "accumulation" in case else N
  params, grads = _problem()
  peer = _Keras3(params, **kwargs)
  peer.run(grads[:n])
  mid = peer.params()
  tx = make_tx(peer)
  state = interop.state_from_keras(peer.opt, tx, mid)
  safety.check_state(state, tx.init(mid))
  ours, final = continue_optax(tx, state, mid, grads[n:], with_state=True)
  theirs = peer.run(grads[n:])
  assert gap(ours, theirs, f"import from Keras 3, {case}") <= TOL
  if case == "default":
    fresh = continue_optax(tx, tx.init(mid), mid, grads[n:])
    assert gap(fresh, theirs, "control: fresh tx.init instead of Keras 3's state") > 100 * TOL
  if "ema" in case:
    their_ema = [np.array(v.numpy()) for v in peer.opt._model_variables_moving_average]
    measured = max_rel_gap([jax.tree.leaves(final.ema)], [their_ema], param_scale(theirs))
    print(f"interop gap, EMA after import from Keras 3, {case}: {measured:.2e}")
    assert measured <= TOL


def test_keras3_var_list_matches_explicitly():
  params, grads = _problem()
  peer = _Keras3(params)
  peer.run(grads[:N])
  mid = peer.params()
  tx = optax_nadam.nadam(LR, momentum_decay=1.0)
  # params in reverse order, matched by the variables instead of by position
  state = interop.state_from_keras(peer.opt, tx, mid[::-1], var_list=peer.vs[::-1])
  ours = continue_optax(tx, state, mid[::-1], [gs[::-1] for gs in grads[N:]])
  theirs = peer.run(grads[N:])
  assert gap([h[::-1] for h in ours], theirs, "import from Keras 3, var_list reversed") <= TOL


def test_keras3_with_the_seed_schedule_is_refused():
  params, grads = _problem()
  peer = _Keras3(params)
  peer.run(grads[:3])
  with pytest.raises(ValueError, match=r"momentum_decay = 1.*Keras 3.*momentum_decay=1\.0"):
    interop.state_from_keras(peer.opt, optax_nadam.nadam(LR), peer.params())


def test_keras3_mid_accumulation_needs_multisteps():
  params, grads = _problem()
  peer = _Keras3(params, gradient_accumulation_steps=3)
  peer.run(grads[:4])
  with pytest.raises(ValueError, match="1 update calls into a gradient accumulation cycle"):
    interop.state_from_keras(peer.opt, optax_nadam.nadam(LR, momentum_decay=1.0),
                             peer.params())


def test_keras3_ema_without_a_place_warns():
  params, grads = _problem()
  peer = _Keras3(params, use_ema=True)
  peer.run(grads[:3])
  with pytest.warns(UserWarning, match="EMA averages"):
    interop.state_from_keras(peer.opt, optax_nadam.nadam(LR, momentum_decay=1.0),
                             peer.params())


# ------------------------------------------------------------------------ tf-keras legacy


class _Legacy:
  """tf_keras.optimizers.legacy.Nadam, the seed's class, on tf.Variables."""

  def __init__(self, params, legacy=True, **kwargs):
    import tensorflow as tf
    import tf_keras

    self.tf = tf
    self.vs = [tf.Variable(np.array(x), name=f"w{i}") for i, x in enumerate(params)]
    cls = tf_keras.optimizers.legacy.Nadam if legacy else tf_keras.optimizers.Nadam
    self.opt = cls(**{"learning_rate": LR, **kwargs})

  def run(self, grads):
    history = []
    for gs in grads:
      self.opt.apply_gradients(zip([self.tf.constant(g) for g in gs], self.vs))
      history.append(self.params())
    return history

  def params(self):
    return [v.numpy().copy() for v in self.vs]


LEGACY_CASES = {
    "default": (dict(), lambda peer: optax_nadam.nadam(LR)),
    "global_clipnorm": (
        dict(global_clipnorm=CLIP),
        lambda peer: optax.chain(optax.clip_by_global_norm(CLIP), optax_nadam.nadam(LR))),
    "schedule_decay": (dict(schedule_decay=0.01),
                       lambda peer: optax_nadam.nadam(LR, momentum_decay=0.01)),
    "keras_front_from_config": (
        dict(clipnorm=CLIP), lambda peer: okeras.Nadam.from_config(peer.opt.get_config())),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
def test_tf_keras_legacy_import_continues_trajectory(case):
  kwargs, make_tx = LEGACY_CASES[case]
  params, grads = _problem()
  peer = _Legacy(params, **kwargs)
  peer.run(grads[:N])
  mid = peer.params()
  tx = make_tx(peer)
  state = interop.state_from_keras(peer.opt, tx, mid)
  safety.check_state(state, tx.init(mid))
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, f"import from tf-keras legacy, {case}") <= TOL
  if case == "default":
    fresh = continue_optax(tx, tx.init(mid), mid, grads[N:])
    assert gap(fresh, theirs, "control: fresh tx.init instead of tf-keras legacy's state") > (
        100 * TOL)


def test_tf_keras_non_legacy_nadam_import_continues_trajectory():
  # tf_keras.optimizers.Nadam (TF 2.11+) has Keras 3's layout and psi = 1.
  params, grads = _problem()
  peer = _Legacy(params, legacy=False)
  peer.run(grads[:N])
  mid = peer.params()
  tx = optax_nadam.nadam(LR, momentum_decay=1.0)
  state = interop.state_from_keras(peer.opt, tx, mid)
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, "import from tf_keras.optimizers.Nadam (non-legacy)") <= TOL


def test_tf_keras_legacy_var_list_and_mismatches():
  params, grads = _problem()
  peer = _Legacy(params)
  peer.run(grads[:N])
  mid = peer.params()
  tx = optax_nadam.nadam(LR)
  state = interop.state_from_keras(peer.opt, tx, mid[::-1], var_list=peer.vs[::-1])
  ours = continue_optax(tx, state, mid[::-1], [gs[::-1] for gs in grads[N:]])
  theirs = peer.run(grads[N:])
  measured = gap([h[::-1] for h in ours], theirs, "import from tf-keras legacy, var_list reversed")
  assert measured <= TOL
  with pytest.raises(ValueError, match=r"holds 10 weights .* params has 3 leaves"):
    interop.state_from_keras(peer.opt, tx, mid[:3])
  with pytest.raises(ValueError, match=r"Keras variable 1 \(Nadam/w1/m.*params leaf \[1\].*shape"):
    interop.state_from_keras(peer.opt, tx, [mid[0], mid[1][:5], mid[2], mid[3]])
  stranger = peer.tf.Variable(np.ones(3, np.float32), name="stranger")
  with pytest.raises(ValueError, match=r"Keras variable 2 \(stranger.*no slots"):
    interop.state_from_keras(peer.opt, tx, mid[:2] + [np.ones(3, np.float32)] + mid[3:],
                             var_list=peer.vs[:2] + [stranger] + peer.vs[3:])


# --------------------------------------------------------------------- torch: bad input


def _stepped_torch(steps=3, **kwargs):
  params, grads = _problem()
  peer = TorchRun(params, **kwargs)
  peer.run(grads[:steps])
  return peer, peer.params()


def test_torch_wrong_leaf_count_is_named():
  peer, mid = _stepped_torch()
  with pytest.raises(ValueError, match=r"slots for 4 variables but params has 3 leaves"):
    interop.state_from_torch(peer.opt, optax_nadam.nadam(LR, eps=1e-8), mid[:3])


def test_torch_wrong_shape_is_named():
  peer, mid = _stepped_torch()
  params = [mid[0].T, mid[1], mid[2], mid[3]]  # a list: the optimizer's order
  with pytest.raises(ValueError, match=r"torch parameter 0 .*params leaf \[0\].*\(7, 5\).*"
                     r"\(5, 7\)"):
    interop.state_from_torch(peer.opt, optax_nadam.nadam(LR, eps=1e-8), params)


def test_torch_parameters_that_skipped_steps_are_refused():
  params, grads = _problem()
  peer = TorchRun(params)
  peer.run(grads[:3])
  peer.step(grads[3], skip={2})  # torch skips a parameter whose grad is None
  with pytest.raises(ValueError, match=r"torch parameter 2 .*params leaf \[2\]\) has taken 3 "
                     r"steps but torch parameter 0 .* has taken 4"):
    interop.state_from_torch(peer.opt, optax_nadam.nadam(LR, eps=1e-8), peer.params())


def test_torch_never_stepped_parameter():
  params, grads = _problem()
  tx = optax_nadam.nadam(LR, eps=1e-8)
  fresh = TorchRun(params)
  state = interop.state_from_torch(fresh.opt, tx, params)  # no state at all: tx.init
  chex.assert_trees_all_equal(state, tx.init(params))
  peer = TorchRun(params)
  peer.step(grads[0], skip={1})
  with pytest.raises(ValueError, match=r"torch parameter 1 .*no optimizer state .*taken 1 steps"):
    interop.state_from_torch(peer.opt, tx, peer.params())


def _tampered(key, value, index=1):
  peer, mid = _stepped_torch()
  sd = peer.opt.state_dict()
  sd["state"][index] = dict(sd["state"][index], **{key: value})
  return sd, mid


BAD_ENTRIES = {
    "negative step": ("step", torch.tensor(-1.0), ValueError, r"step is -1"),
    "fractional step": ("step", torch.tensor(2.5), ValueError, r"step is 2.5"),
    "mu_product above 1": ("mu_product", torch.tensor(1.5), ValueError, r"mu_product is 1.5"),
    "mu_product NaN": ("mu_product", torch.tensor(float("nan")), ValueError, r"mu_product is nan"),
    "NaN moment": ("exp_avg", torch.full((11,), float("nan")), ValueError, r"m holds NaN"),
    "negative second moment": ("exp_avg_sq", -torch.ones(11), ValueError, r"v .* negative"),
    "integer moment": ("exp_avg", torch.ones(11, dtype=torch.int32), ValueError, r"dtype int32"),
    "wrong shape": ("exp_avg", torch.ones(12), ValueError, r"m has shape \(12,\)"),
    "complex moment": ("exp_avg", torch.ones(11, dtype=torch.complex64), ValueError, r"complex"),
    "not a tensor": ("exp_avg", "import os", TypeError, r"exp_avg is a str"),
    "unknown key": ("momentum_buffer", torch.ones(11), ValueError,
                    r"unexpected \['momentum_buffer'"),
}


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_torch_bad_state_dict_entry_is_named(name):
  key, value, error, message = BAD_ENTRIES[name]
  sd, mid = _tampered(key, value)
  with pytest.raises(error, match=r"torch parameter 1 .*" + message):
    interop.state_from_torch(sd, optax_nadam.nadam(LR, eps=1e-8), mid)


def test_torch_step_disagreement_in_state_dict_is_named():
  sd, mid = _tampered("step", torch.tensor(7.0), index=3)
  with pytest.raises(ValueError, match=r"torch parameter 3 .*taken 7 steps"):
    interop.state_from_torch(sd, optax_nadam.nadam(LR, eps=1e-8), mid)


def test_torch_not_nadam_and_malformed_state_dicts():
  params, grads = _problem()
  ps = [torch.tensor(np.array(x), requires_grad=True) for x in params]
  adam = torch.optim.Adam(ps)
  tx = optax_nadam.nadam(LR, eps=1e-8)
  with pytest.raises(TypeError, match="optimizer is a Adam"):
    interop.state_from_torch(adam, tx, params)
  with pytest.raises(ValueError, match=r"param_groups\[0\] has no 'momentum_decay'"):
    interop.state_from_torch(adam.state_dict(), tx, params)
  with pytest.raises(ValueError, match=r"no 'param_groups' key"):
    interop.state_from_torch({"state": {}}, tx, params)
  with pytest.raises(TypeError, match="must be a torch.optim.NAdam or nn.Module"):
    interop.state_from_torch([1, 2], tx, params)


def test_torch_hyperparameters_must_match_tx_schedule():
  peer, mid = _stepped_torch(betas=(0.8, 0.999))
  with pytest.raises(ValueError, match=r"beta_1 = 0.8, momentum_decay = 0.004"):
    interop.state_from_torch(peer.opt, optax_nadam.nadam(LR, eps=1e-8), mid)
  state = interop.state_from_torch(peer.opt, optax_nadam.nadam(LR, b1=0.8, eps=1e-8), mid)
  assert int(state[0].count) == 3


def test_tx_must_hold_scale_by_nadam_once_per_param():
  peer, mid = _stepped_torch()
  with pytest.raises(ValueError, match="no scale_by_nadam"):
    interop.state_from_torch(peer.opt, optax.adam(LR), mid)
  twice = optax.chain(optax_nadam.scale_by_nadam(), optax_nadam.nadam(LR))
  with pytest.raises(ValueError, match=r"params leaf \[0\] is held by two ScaleByNadamStates"):
    interop.state_from_torch(peer.opt, twice, mid)
  partial = optax.multi_transform({"n": optax_nadam.nadam(LR, eps=1e-8),
                                   "z": optax.set_to_zero()}, ["n", "n", "n", "z"])
  with pytest.raises(ValueError, match=r"leaves \['\[3\]'\] are not held by any scale_by_nadam"):
    interop.state_from_torch(peer.opt, partial, mid)


def test_torch_import_copies_instead_of_sharing_memory():
  params, grads = _problem()
  peer = TorchRun(params)
  peer.run(grads[:3])
  tx = optax_nadam.nadam(LR, eps=1e-8)
  state = interop.state_from_torch(peer.opt, tx, peer.params())
  before = jax.tree.map(np.array, state)
  peer.run(grads[3:6])  # torch updates its state tensors in place
  chex.assert_trees_all_equal(state, before)


@pytest.mark.parametrize("dtype,mu_dtype", [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, None),
                                            (jnp.float16, None)])
def test_torch_import_casts_to_the_state_dtypes(dtype, mu_dtype):
  peer, mid = _stepped_torch()
  params = [jnp.asarray(x, dtype) for x in mid]
  tx = optax_nadam.nadam(LR, eps=1e-8, mu_dtype=mu_dtype)
  state = interop.state_from_torch(peer.opt, tx, params)
  safety.check_state(state, tx.init(params))  # dtypes are tx.init's
  want = peer.opt.state[peer.ps[0]]["exp_avg"].numpy()
  np.testing.assert_allclose(np.asarray(state[0].m[0], np.float32), want, rtol=1e-2, atol=1e-6)


# ------------------------------------------------------------------------ export direction


def _ours_then_export(tx, grads):
  params0, _ = _problem()
  ours_mid, state = continue_optax(tx, tx.init(params0), params0, grads[:N], with_state=True)
  return ours_mid[-1], state


def test_torch_export_continues_our_trajectory_and_round_trips():
  params0, grads = _problem()
  tx = optax_nadam.nadam(LR, eps=1e-8)
  mid, state = _ours_then_export(tx, grads)
  peer = TorchRun(mid)
  interop.state_to_torch(state, mid, peer.opt)
  back = interop.state_from_torch(peer.opt, tx, mid)
  chex.assert_trees_all_equal(back, state)
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, "export to torch") <= TOL
  with pytest.raises(ValueError, match=r"torch parameter 0 has shape \(5, 7\) but params leaf "
                     r"\[0\] has \(7, 5\)"):
    interop.state_to_torch(state, [mid[0].T] + mid[1:], TorchRun([mid[0].T] + mid[1:]).opt)


def test_keras3_export_continues_our_trajectory_and_round_trips():
  params0, grads = _problem()
  tx = optax_nadam.nadam(LR, momentum_decay=1.0)
  mid, state = _ours_then_export(tx, grads)
  peer = _Keras3(mid)
  interop.state_to_keras(state, mid, peer.opt, var_list=peer.vs)
  back = interop.state_from_keras(peer.opt, tx, mid)
  chex.assert_trees_all_equal(back, state)
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, "export to Keras 3") <= TOL


def test_tf_keras_legacy_export_continues_our_trajectory_and_round_trips():
  params0, grads = _problem()
  tx = optax_nadam.nadam(LR)
  mid, state = _ours_then_export(tx, grads)
  peer = _Legacy(mid)
  with pytest.raises(ValueError, match="pass var_list"):
    interop.state_to_keras(state, mid, peer.opt)
  interop.state_to_keras(state, mid, peer.opt, var_list=peer.vs)
  back = interop.state_from_keras(peer.opt, tx, mid)
  chex.assert_trees_all_equal(back, state)
  ours = continue_optax(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert gap(ours, theirs, "export to tf-keras legacy") <= TOL
