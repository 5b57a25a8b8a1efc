"""An `nnx.Optimizer` holding an imported optimizer state (Flax NNX), via public Flax calls."""

from typing import Any

import jax
import optax

from optax_nadam import _tree
from optax_nadam.transform import ScaleByNadamState


def nnx_optimizer(model: Any, tx: optax.GradientTransformation, opt_state: optax.OptState,
                  *, wrt: Any = None) -> Any:
  """An ``nnx.Optimizer(model, tx, wrt=wrt)`` whose state is `opt_state`.

  For a state imported with `resume_from_torch` (or `state_from_torch`,
  `state_from_keras`) for ``nnx.state(model, wrt)``: after
  ``nnx.update(model, params)``, ``optimizer.update(model, grads)`` continues
  the peer's run. The optimizer's ``step`` is set to the imported step count.

  Args:
    model: the NNX module, already holding the imported weights.
    tx: the optax transformation the state belongs to.
    opt_state: its state, for the pure arrays of ``nnx.state(model, wrt)``.
    wrt: the variables the optimizer trains (default ``nnx.Param``).

  Returns:
    The `nnx.Optimizer`.

  Raises:
    ValueError: `opt_state` is not a state of ``tx.init`` for those variables
      (another tx, or another model's parameters).
  """
  from flax import nnx

  wrt = nnx.Param if wrt is None else wrt
  optimizer = nnx.Optimizer(model, tx, wrt=wrt)
  want = jax.tree.structure(tx.init(nnx.as_pure(nnx.state(model, wrt))))
  if jax.tree.structure(opt_state) != want:
    raise ValueError("opt_state does not have the structure of tx.init(nnx.as_pure("
                     "nnx.state(model, wrt))): import it for this model's parameters and this tx "
                     f"(got {jax.tree.structure(opt_state)}, expected {want}).")
  nnx.update(optimizer.opt_state, nnx.state(opt_state))
  counts = {int(node.count) for _, node in _tree.find_nodes(opt_state, ScaleByNadamState)}
  if len(counts) == 1:
    optimizer.step[...] = counts.pop()
  return optimizer
