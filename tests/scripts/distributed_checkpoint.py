"""Save, restore in a fresh process, continue: nadam training with orbax-checkpoint.

Usage: ``_distributed_checkpoint.py ACTION LAYOUT CKPT_DIR TOTAL K OUT_NPZ``

- ACTION ``full``: TOTAL steps without interruption; writes the final params and
  optimizer state to OUT_NPZ.
- ACTION ``save``: K steps, then an orbax checkpoint of params + optimizer state +
  step under CKPT_DIR (`ocp.CheckpointManager`, `args.StandardSave`).
- ACTION ``resume``: restores that checkpoint into abstract targets built from
  `jax.eval_shape` (with the target shardings when LAYOUT is ``fsdp``), checks the
  restored state with `optax_nadam.safety.check_state`, takes the remaining
  TOTAL - K steps and writes OUT_NPZ.

LAYOUT ``single``: one device. ``fsdp``: 8 simulated devices, every parameter (and
so m and v) split over them along its first axis, count and mu_product replicated.
"""

import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_nadam import safety
from tests.scripts import distributed_common as common

ACTION, LAYOUT, CKPT_DIR = sys.argv[1:4]
TOTAL, K = int(sys.argv[4]), int(sys.argv[5])
OUT = sys.argv[6]

tx = common.make_tx()
if LAYOUT == "fsdp":
  assert jax.device_count() == 8, jax.device_count()
  mesh = Mesh(np.array(jax.devices()), ("d",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("d"))

  def sharding_of(a):
    return NamedSharding(mesh, P("d", *([None] * (a.ndim - 1)))) if a.ndim else replicated
else:
  batch_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def sharding_of(a):
    return batch_sharding


def initial():
  params = jax.tree.map(lambda a: jax.device_put(a, sharding_of(a)), common.init_params())
  # m and v like the params; count and mu_product replicated (the scalars' sharding_of).
  state = jax.tree.map(lambda a: jax.device_put(a, sharding_of(a)), tx.init(params))
  return {"params": params, "opt_state": state}


def abstract_target():
  """What a fresh process restores into: shapes, dtypes and the target shardings, no data."""
  shapes = jax.eval_shape(initial)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding_of(s)), shapes)


@jax.jit
def step(train_state, x, y):
  params, state = train_state["params"], train_state["opt_state"]
  grads = jax.grad(common.loss_fn)(params, x, y)
  updates, state = tx.update(grads, state, params)
  return {"params": optax.apply_updates(params, updates), "opt_state": state}


def train(train_state, first, last):
  x, y = common.make_batches(TOTAL)
  for i in range(first, last):
    train_state = step(train_state, jax.device_put(x[i], batch_sharding),
                       jax.device_put(y[i], batch_sharding))
  return train_state


def shardings_match(tree, target) -> bool:
  return all(a.sharding.is_equivalent_to(t.sharding, a.ndim)
             for a, t in zip(jax.tree.leaves(tree), jax.tree.leaves(target)))


def write(train_state, extra):
  np.savez(OUT, **common.flat_arrays(train_state))
  common.emit({"action": ACTION, "layout": LAYOUT, "device_count": jax.device_count(),
               "shardings_match": shardings_match(train_state, abstract_target()), **extra})


options = ocp.CheckpointManagerOptions(max_to_keep=2)
if ACTION == "full":
  write(train(initial(), 0, TOTAL), {})
elif ACTION == "save":
  train_state = train(initial(), 0, K)
  with ocp.CheckpointManager(CKPT_DIR, options=options) as manager:
    manager.save(K, args=ocp.args.StandardSave(train_state))
    manager.wait_until_finished()
  np.savez(OUT, **common.flat_arrays(train_state))
  common.emit({"action": ACTION, "saved_step": K})
elif ACTION == "resume":
  target = abstract_target()
  with ocp.CheckpointManager(CKPT_DIR, options=options) as manager:
    restored_step = manager.latest_step()
    restored = manager.restore(restored_step, args=ocp.args.StandardRestore(target))
  restored_matches = shardings_match(restored, target)
  # Refuse a checkpoint from another model/chain before training on it.
  safety.check_state(restored["opt_state"], jax.eval_shape(tx.init, target["params"]))
  specs = {jax.tree_util.keystr(p): str(a.sharding.spec) if hasattr(a.sharding, "spec") else ""
           for p, a in jax.tree_util.tree_flatten_with_path(restored)[0]}
  write(train(restored, restored_step, TOTAL),
        {"restored_step": restored_step, "restored_shardings_match": restored_matches,
         "restored_specs": specs})
else:
  raise SystemExit(f"unknown action {ACTION!r}")
