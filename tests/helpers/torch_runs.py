"""A real torch.optim.NAdam run on fixed gradients, and the gap to our continuation.

Shared by the torch interop tests (tests/interop/): torch steps on a
given gradient sequence, is saved with `torch.save`, and optax continues from
the file; the gap is max |ours - torch| / max |torch param| over the steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

SHAPES = [(6, 4), (6,), (3, 6), (3,)]
LR = 1e-2
TOL = 1e-5
MORE = 20  # steps continued after the import


def problem(steps, seed=0, dtype=np.float32):
  """Initial params and a fixed gradient sequence (gradients ~0.1)."""
  rng = np.random.default_rng(seed)
  params = [rng.normal(size=s).astype(dtype) for s in SHAPES]
  grads = [[(0.1 * rng.normal(size=s)).astype(dtype) for s in SHAPES] for _ in range(steps)]
  return params, grads


class TorchRun:
  """torch.optim.NAdam on tensors built from `params`, stepping on given gradients."""

  def __init__(self, params, **kwargs):
    self.ps = [torch.tensor(np.array(p), requires_grad=True) for p in params]
    self.opt = torch.optim.NAdam(self.ps, **{"lr": LR, **kwargs})

  def run(self, grads):
    history = []
    for gs in grads:
      for p, g in zip(self.ps, gs):
        p.grad = torch.tensor(np.array(g))
      self.opt.step()
      history.append(self.params())
    return history

  def params(self):
    return [p.detach().numpy().copy() for p in self.ps]


def continue_optax(tx, state, params, grads):
  """Our optimizer from `state` on `grads`; params after every step."""

  @jax.jit
  def step(ps, state, gs):
    updates, state = tx.update(gs, state, ps)
    return optax.apply_updates(ps, updates), state

  ps = [jnp.asarray(p) for p in params]
  history = []
  for gs in grads:
    ps, state = step(ps, state, [jnp.asarray(g, p.dtype) for g, p in zip(gs, ps)])
    history.append([np.asarray(p) for p in ps])
  return history


def gap(ours, theirs):
  """max over steps of max |ours - theirs| / max |theirs| (all leaves)."""
  diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for sa, sb in zip(ours, theirs, strict=True) for a, b in zip(sa, sb, strict=True))
  scale = max(float(np.max(np.abs(b))) for sb in theirs for b in sb)
  return diff / scale


def saved(tmp_path, steps=5, name="ckpt.pt", checkpoint=None, **kwargs):
  """A torch run saved after `steps` steps: (path, run, mid params, remaining grads)."""
  params, grads = problem(steps + MORE)
  run = TorchRun(params, **kwargs)
  run.run(grads[:steps])
  path = tmp_path / name
  sd = run.opt.state_dict()
  torch.save(sd if checkpoint is None else checkpoint(run, sd), path)
  return path, run, run.params(), grads[steps:]
