"""Flax NNX: checkpoint a model and its `nnx.Optimizer` (nadam) with orbax, resume elsewhere.

Usage: ``_distributed_checkpoint_nnx.py ACTION CKPT_DIR TOTAL K OUT_NPZ`` with ACTION
``full`` (TOTAL steps, no interruption), ``save`` (K steps, then save
``{"model": nnx.state(model), "optimizer": nnx.state(optimizer)}`` with
`ocp.StandardCheckpointer`) or ``resume`` (a fresh model and optimizer, abstract
target from `nnx.eval_shape`, restore, `nnx.update`, the remaining steps). Writes
the final params and optimizer state as plain arrays to OUT_NPZ.
"""

import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from tests.scripts import distributed_common as common

ACTION, CKPT_DIR = sys.argv[1:3]
TOTAL, K = int(sys.argv[3]), int(sys.argv[4])
OUT = sys.argv[5]


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(common.N_IN, common.N_HIDDEN, rngs=rngs)
    self.out = nnx.Linear(common.N_HIDDEN, common.N_OUT, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def create(seed=0):
  model = MLP(nnx.Rngs(seed))
  return model, nnx.Optimizer(model, common.make_tx(), wrt=nnx.Param)


@nnx.jit
def step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  grads = nnx.grad(loss_fn)(model)
  optimizer.update(model, grads)


def train(model, optimizer, first, last):
  x, y = common.make_batches(TOTAL)
  for i in range(first, last):
    step(model, optimizer, x[i], y[i])


def pure(model, optimizer):
  """Everything that determines the rest of the run, as ``{path: array}``."""
  return common.flat_arrays({"model": nnx.to_pure_dict(nnx.state(model)),
                             "optimizer": nnx.to_pure_dict(nnx.state(optimizer))})


if ACTION == "full":
  model, optimizer = create()
  train(model, optimizer, 0, TOTAL)
  np.savez(OUT, **pure(model, optimizer))
  common.emit({"action": ACTION, "step": int(optimizer.step[...])})
elif ACTION == "save":
  model, optimizer = create()
  train(model, optimizer, 0, K)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(f"{CKPT_DIR}/step_{K}",
              {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
    ckpt.wait_until_finished()
  np.savez(OUT, **pure(model, optimizer))
  common.emit({"action": ACTION, "step": int(optimizer.step[...])})
elif ACTION == "resume":
  # A different seed: every restored value must come from the checkpoint, not from init.
  model, optimizer = create(seed=1)
  abstract = nnx.eval_shape(lambda: {"model": nnx.state(create()[0]),
                                     "optimizer": nnx.state(create()[1])})
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(f"{CKPT_DIR}/step_{K}", abstract)
  nnx.update(model, restored["model"])
  nnx.update(optimizer, restored["optimizer"])
  restored_step = int(optimizer.step[...])
  train(model, optimizer, restored_step, TOTAL)
  np.savez(OUT, **pure(model, optimizer))
  common.emit({"action": ACTION, "restored_step": restored_step,
               "step": int(optimizer.step[...]), "jax": jax.__version__})
else:
  raise SystemExit(f"unknown action {ACTION!r}")
