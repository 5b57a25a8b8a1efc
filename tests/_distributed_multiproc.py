"""One process of a multi-process (multi-controller) data-parallel nadam run on CPU.

Usage: ``_distributed_multiproc.py PROCESS_ID NUM_PROCESSES PORT OUT_NPZ STEPS``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=L`` (L local CPU devices).

Each process joins the coordinator on 127.0.0.1:PORT, builds a mesh over all
``NUM_PROCESSES * L`` devices, feeds only its own slice of each global batch
(`jax.make_array_from_process_local_data`), and takes ``STEPS`` jitted steps with
replicated params and optimizer state; the gradient mean across processes is an
all-reduce over the CPU collectives (gloo). It writes the params and optimizer
state it ends with (its local copy of the replicated arrays) to OUT_NPZ.
"""

import sys

import _distributed_common as common
import jax
import numpy as np

process_id, num_processes, port, out_path, steps = sys.argv[1:6]
process_id, num_processes, steps = int(process_id), int(num_processes), int(steps)

jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
    process_id=process_id, initialization_timeout=90, shutdown_timeout_seconds=30,
)

import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

assert jax.process_count() == num_processes, jax.process_count()
assert jax.process_index() == process_id
n_global, n_local = jax.device_count(), jax.local_device_count()
assert n_global == num_processes * n_local, (n_global, n_local)

mesh = jax.make_mesh((n_global,), ("data",), devices=jax.devices())
replicated = NamedSharding(mesh, P())
batch_sharding = NamedSharding(mesh, P("data"))

tx = common.make_tx()
# Every process holds the same host copy; the global array is replicated on all devices.
params = jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(replicated, a, a.shape),
    common.init_params())
state = jax.jit(tx.init, out_shardings=replicated)(params)


@jax.jit
def step(params, state, x, y):
  loss, grads = jax.value_and_grad(common.loss_fn)(params, x, y)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


x_all, y_all = common.make_batches(steps)
rows = common.BATCH // num_processes
mine = slice(process_id * rows, (process_id + 1) * rows)
losses = []
for i in range(steps):
  # The process-local rows only: the global batch exists on no single host.
  x = jax.make_array_from_process_local_data(batch_sharding, x_all[i, mine],
                                             (common.BATCH, common.N_IN))
  y = jax.make_array_from_process_local_data(batch_sharding, y_all[i, mine], (common.BATCH,))
  assert not x.is_fully_addressable
  params, state, loss = step(params, state, x, y)
  losses.append(float(np.asarray(loss.addressable_data(0))))


def local_copy(a):
  assert a.sharding.is_fully_replicated, a.sharding
  return np.asarray(a.addressable_data(0))


arrays = {"params" + k: v for k, v in common.flat_arrays(jax.tree.map(local_copy, params)).items()}
arrays.update(
    {"state" + k: v for k, v in common.flat_arrays(jax.tree.map(local_copy, state)).items()})
np.savez(out_path, **arrays)
common.emit({
    "process_index": jax.process_index(), "process_count": jax.process_count(),
    "device_count": n_global, "local_device_count": n_local,
    "backend": jax.default_backend(), "jax": jax.__version__,
    "collectives": jax.config.jax_cpu_collectives_implementation,
    "losses": losses,
})
jax.distributed.shutdown()
