"""State migration between optax_nadam and the real peers (optax_nadam.interop).

Every parity test runs the installed peer for N steps, imports its state,
then runs M more steps in the peer and in optax on the same gradients: the
parameters must agree to float32 rounding (<= 1e-5 of the parameter scale).
A control run from a fresh ``tx.init`` shows the same check fails without the
import. `pytest -s tests/test_interop.py` prints every measured gap.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optax_nadam
from optax_nadam import interop, safety
from optax_nadam import keras as okeras
from tests._reference import make_problem, max_rel_gap, param_scale

SHAPES = [(7, 5), (11,), (2, 3, 4), ()]
N, M = 30, 30
LR = 1e-2
TOL = 1e-5  # fp32 rounding, relative to each parameter's scale


def _problem(seed=3):
  return make_problem(SHAPES, N + M, seed=seed)


def _continue(tx, state, params, grads):
  """Our optimizer from `state` on `grads`; params after every step."""

  @jax.jit
  def step(ps, state, gs):
    updates, state = tx.update(gs, state, ps)
    return optax.apply_updates(ps, updates), state

  ps = [jnp.asarray(x) for x in params]
  history = []
  for gs in grads:
    ps, state = step(ps, state, [jnp.asarray(g) for g in gs])
    history.append([np.asarray(x) for x in ps])
  return history, state


def _gap(ours, theirs, name):
  gap = max_rel_gap(ours, theirs, param_scale(theirs))
  print(f"\ninterop gap after import, {name}: {gap:.2e} (M={len(theirs)} steps)")
  return gap


# ------------------------------------------------------------------------------ torch


class _Torch:
  """torch.optim.NAdam on float32 tensors, stepping on given gradients."""

  def __init__(self, params, groups=None, clip=None, schedule=None, **kwargs):
    self.ps = [torch.tensor(np.array(x), requires_grad=True) for x in params]
    if groups is None:
      spec = self.ps
    else:
      spec = [dict(params=[self.ps[i] for i in idx], **extra) for idx, extra in groups]
    self.opt = torch.optim.NAdam(spec, lr=LR, **kwargs)
    self.clip = clip
    self.sched = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(
        self.opt, schedule)

  def step(self, grads, skip=()):
    for i, (p, g) in enumerate(zip(self.ps, grads)):
      p.grad = None if i in skip else torch.tensor(np.array(g))
    if self.clip is not None:
      torch.nn.utils.clip_grad_norm_(self.ps, self.clip)
    self.opt.step()
    if self.sched is not None:
      self.sched.step()

  def params(self):
    return [p.detach().numpy().copy() for p in self.ps]

  def run(self, grads):
    history = []
    for gs in grads:
      self.step(gs)
      history.append(self.params())
    return history


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
        dict(clip=1.0),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax_nadam.nadam(LR, eps=1e-8))),
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
  peer = _Torch(params, **kwargs)
  peer.run(grads[:N])
  mid = peer.params()
  tx = make_tx()
  source = peer.opt.state_dict() if from_state_dict else peer.opt
  state = interop.state_from_torch(source, tx, mid)
  safety.check_state(state, tx.init(mid))  # the tree, shapes and dtypes of tx.init
  ours, _ = _continue(tx, state, mid, grads[N:])
  theirs = peer.run(grads[N:])
  assert _gap(ours, theirs, f"torch {case}") <= TOL
  if case == "default":
    fresh, _ = _continue(tx, tx.init(mid), mid, grads[N:])
    assert max_rel_gap(fresh, theirs, param_scale(theirs)) > 100 * TOL
  if case == "lr_schedule":
    unsynced = interop.state_from_torch(source, tx, mid, sync_schedules=False)
    drift, _ = _continue(tx, unsynced, mid, grads[N:])
    assert max_rel_gap(drift, theirs, param_scale(theirs)) > 100 * TOL
