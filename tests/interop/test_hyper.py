"""interop._check: tx's whole next step is checked against the peer's hyperparameters.

Each case saves a real torch NAdam run, imports it into a tx that differs in
one hyperparameter, and checks: the import is refused naming that
hyperparameter, both values and the matching tx; with the check off, the
continuation really leaves torch's trajectory (the measured gap, printed with
``pytest -s``); with the matching tx it stays within 1e-5.
"""

import chex
import jax
import numpy as np
import optax
import pytest
import torch

import optax_nadam
from optax_nadam import interop
from optax_nadam.interop import _check as hyper
from optax_nadam.interop._check import PeerHyperparams, peer_tx, printable
from optax_nadam.interop._nodes import read_state
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, TOL, TorchRun, problem, saved


def _nadam(**kw):
  return optax_nadam.nadam(LR, eps=1e-8, **kw)


# torch kwargs, the peer's hyperparameters the message lists, the tx that matches torch.
PEER = r"not the peer's .*The peer's hyperparameters: "
MISMATCHES = {
    "lr": (dict(lr=0.1), r"learning_rate=0\.1, ", r"optax_nadam\.nadam\(0\.1,",
           lambda: optax_nadam.nadam(0.1, eps=1e-8)),
    "coupled_weight_decay": (
        dict(weight_decay=0.1), r".*weight_decay=0\.1, decoupled_weight_decay=False",
        r"optax\.chain\(optax\.add_decayed_weights\(0\.1\), ",
        lambda: optax.chain(optax.add_decayed_weights(0.1), _nadam())),
    "decoupled_weight_decay": (
        dict(weight_decay=0.1, decoupled_weight_decay=True),
        r".*weight_decay=0\.1, decoupled_weight_decay=True",
        r"optax_nadam\.nadamw\(0\.01, .*weight_decay=0\.1\)",
        lambda: optax_nadam.nadamw(LR, eps=1e-8, weight_decay=0.1)),
    "eps": (dict(eps=1e-3), r".*eps=0\.001, ",
            r"eps=0\.001", lambda: optax_nadam.nadam(LR, eps=1e-3)),
    "maximize": (dict(maximize=True), r".*maximize=True", r"optax\.chain\(optax\.scale\(-1\.0\), ",
                 lambda: optax.chain(optax.scale(-1.0), _nadam())),
    "b2": (dict(betas=(0.9, 0.99)), r".*b2=0\.99, ", r"b2=0\.99,", lambda: _nadam(b2=0.99)),
    # The README's trap: torch's eps 1e-8 continued by our default eps 1e-7.
    "eps_default": (dict(eps=1e-8), r".*eps=1e-08, ", r"eps=1e-08", lambda: _nadam()),
    "eps_10x": (dict(eps=1e-7), r".*eps=1e-07, ", r"eps=1e-07",
                lambda: optax_nadam.nadam(LR, eps=1e-7)),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_a_hyperparameter_mismatch_is_refused_and_named(tmp_path, name):
  kwargs, message, fix, matching = MISMATCHES[name]
  # eps 1e-7 vs 1e-8 moves a run only where sqrt(v) is near eps: gradients ~1e-7 there.
  path, run, mid, grads = saved(tmp_path, grad_scale=1e-7 if name.startswith("eps_") else 0.1,
                                **kwargs)
  # eps_default: tx is our default nadam(lr) (eps 1e-7), the README's trap.
  wrong_tx = {"eps_default": lambda: optax_nadam.nadam(LR)}.get(name, _nadam)
  with pytest.raises(ValueError, match=PEER + message) as refused:
    interop.state_from_torch(path, wrong_tx(), mid)
  print(f"\nrefused ({name}): {refused.value}")
  assert "check_hyperparams=False" in str(refused.value)
  assert refused.match(fix)
  theirs = run.run(grads)
  wrong = continue_optax(wrong_tx(), interop.state_from_torch(
      path, wrong_tx(), mid, check_hyperparams=False), mid, grads)
  measured = gap(wrong, theirs)
  tx = matching()
  right = gap(continue_optax(tx, interop.state_from_torch(path, tx, mid), mid, grads), theirs)
  print(f"\nhyperparameter gap, torch {kwargs} continued by the wrong tx: {measured:.2e}, by "
        f"the matching tx: {right:.2e} after {len(grads)} steps")
  assert right <= TOL
  assert measured > 10 * TOL


def test_the_probe_does_not_change_the_state(tmp_path):
  path, _, mid, _ = saved(tmp_path, weight_decay=0.1)
  tx = optax.chain(optax.add_decayed_weights(0.1), _nadam())
  checked = interop.state_from_torch(path, tx, mid)
  unchecked = interop.state_from_torch(path, tx, mid, check_hyperparams=False)
  chex.assert_trees_all_equal(checked, unchecked)


def test_check_schedule_false_turns_every_check_off(tmp_path):
  path, _, mid, _ = saved(tmp_path, lr=0.1, betas=(0.8, 0.999))
  interop.state_from_torch(path, _nadam(), mid, check_schedule=False)  # as before: no checks
  with pytest.raises(ValueError, match="The peer's hyperparameters: learning_rate=0\\.1, "):
    interop.state_from_torch(path, _nadam(b1=0.8), mid, check_schedule=False,
                             check_hyperparams=True)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1), dict(maximize=True),
                                    dict(weight_decay=0.1, decoupled_weight_decay=True),
                                    dict(eps=1e-3, lr=0.1)])
def test_the_peer_tx_takes_torchs_next_step(kwargs):
  params, grads = problem(4)
  run = TorchRun(params, **kwargs)
  run.run(grads[:3])
  before = run.params()
  sd = run.opt.state_dict()
  g = sd["param_groups"][0]
  h = PeerHyperparams(g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["momentum_decay"],
                      g["weight_decay"], g["decoupled_weight_decay"], g["maximize"])
  tx = peer_tx(h)
  state = interop.state_from_torch(sd, tx, before, check_hyperparams=False)
  grad = [jax.numpy.asarray(g) for g in grads[3]]
  expected, _ = tx.update(grad, state, before)
  after = run.run(grads[3:])[0]
  for e, b, a in zip(expected, before, after):
    np.testing.assert_allclose(b + e, a, rtol=0, atol=1e-6 * np.max(np.abs(a)))


def _stepped(tx):
  """A torch run of 3 steps imported (unchecked) into `tx`: (params, state)."""
  params, grads = problem(3)
  run = TorchRun(params)
  run.run(grads)
  return run.params(), interop.state_from_torch(run.opt, tx, run.params(),
                                                check_hyperparams=False)


def test_clipping_inside_the_peer_is_probed():
  h = PeerHyperparams(LR, 0.9, 0.999, 1e-8, 0.004, global_clipnorm=1.0, clips_in_optimizer=True)
  where = [f"variable {i}" for i in range(4)]
  mid, state = _stepped(_nadam())
  with pytest.raises(ValueError, match=r"variable 0: .*global_clipnorm=1\b"
                     r".*optax\.clip_by_global_norm\(1\)"):
    hyper.check_step(_nadam(), state, mid, [h] * 4, where)
  clipped = optax.chain(optax.clip_by_global_norm(1.0), _nadam())
  mid, state = _stepped(clipped)
  hyper.check_step(clipped, state, mid, [h] * 4, where)
  # torch clips outside the optimizer: tx's clipping is the training loop's, not checked.
  hyper.check_step(clipped, state, mid, [h._replace(clips_in_optimizer=False)] * 4, where)


def test_half_precision_params_are_checked_coarsely():
  params, grads = problem(3)
  run = TorchRun(params, lr=0.1)
  run.run(grads)
  mid = [jax.numpy.asarray(p, jax.numpy.bfloat16) for p in run.params()]
  interop.state_from_torch(run.opt, optax_nadam.nadam(0.1, eps=1e-8), mid)
  with pytest.raises(ValueError, match="The peer's hyperparameters: learning_rate=0\\.1, "):
    interop.state_from_torch(run.opt, _nadam(), mid)


def test_read_state_matches_what_the_probe_reads():
  mid, state = _stepped(_nadam())
  assert [c for c, *_ in read_state(state, mid)] == [3] * 4


def test_betas_that_are_not_a_pair_are_a_clear_error():
  params, grads = problem(2)
  run = TorchRun(params)
  run.run(grads)
  for bad in ([], {}, [0.9]):
    sd = run.opt.state_dict()
    sd["param_groups"][0]["betas"] = bad
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas'\] is .*a pair"):
      interop.state_from_torch(sd, _nadam(), run.params())
  sd = run.opt.state_dict()
  sd["param_groups"][0]["betas"] = (torch.tensor(0.9), 0.999)  # tensors are read as numbers
  interop.state_from_torch(sd, _nadam(), run.params())


def test_two_differences_are_refused_listing_the_peers_values(tmp_path):
  path, _, mid, _ = saved(tmp_path, lr=0.1, maximize=True)
  with pytest.raises(ValueError, match=r"The peer's hyperparameters: learning_rate=0\.1, "
                     r".*maximize=True; tx does not state its hyperparameters"):
    interop.state_from_torch(path, _nadam(), mid)


def test_a_resumed_tx_prints_its_hyperparameters_and_is_an_optax_tx(tmp_path):
  from flax import nnx

  def checkpoint(run, sd):
    return {"model": {f"p{i}": p.detach().clone() for i, p in enumerate(run.ps)},
            "optimizer": sd}

  path, _, mid, _ = saved(tmp_path, lr=0.05, weight_decay=0.1, checkpoint=checkpoint)
  params, tx, state = interop.resume_from_torch(path, mid)
  assert repr(tx).startswith("PeerTx(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-08, ")
  assert "weight_decay=0.1, decoupled_weight_decay=False, maximize=False)" in repr(tx)
  jax.jit(tx.update)(params, state, params)
  chained = optax.chain(optax.identity(), tx)
  chained.update(params, chained.init(params), params)
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, nnx.state(model, nnx.Param))
  # A tx that states its hyperparameters has them listed beside the peer's when refused.
  h = PeerHyperparams(0.01, 0.9, 0.999, 1e-8, 0.004, weight_decay=0.1)
  tx = printable(peer_tx(h), [h])
  with pytest.raises(ValueError, match=r"tx has learning_rate=0\.01, .*\(differing: "
                     r"learning_rate\)"):
    interop.state_from_torch(path, tx, mid)
