"""One process of a multi-process (multi-controller) data-parallel nadam run on CPU.

Usage: ``_distributed_multiproc.py PROCESS_ID NUM_PROCESSES PORT OUT_NPZ STEPS LAYOUT``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=L`` (L local CPU devices).

Each process joins the coordinator on 127.0.0.1:PORT, builds a mesh over all
``NUM_PROCESSES * L`` devices, feeds only its own slice of each global batch
(`jax.make_array_from_process_local_data`), and takes ``STEPS`` jitted steps; the
cross-process collectives run over the CPU collectives (gloo). LAYOUT ``dp``:
params and optimizer state replicated. LAYOUT ``fsdp``: every param, and so m and
v, split over all devices along its first axis, so each process holds only half
of each. It writes the params and optimizer state it ends with (gathered from all
processes with `process_allgather` for ``fsdp``) to OUT_NPZ.
"""

import sys

import jax
import numpy as np

from tests.scripts import distributed_common as common

process_id, num_processes, port, out_path, steps, layout = sys.argv[1:7]
process_id, num_processes, steps = int(process_id), int(num_processes), int(steps)

jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
    process_id=process_id, initialization_timeout=90, shutdown_timeout_seconds=30,
)

import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

assert jax.process_count() == num_processes, jax.process_count()
assert jax.process_index() == process_id
n_global, n_local = jax.device_count(), jax.local_device_count()
assert n_global == num_processes * n_local, (n_global, n_local)

# Auto axes: jit propagates the shardings (FSDP's matmuls gather the params by themselves).
mesh = jax.make_mesh((n_global,), ("data",), devices=jax.devices(),
                     axis_types=(jax.sharding.AxisType.Auto,))
replicated = NamedSharding(mesh, P())
batch_sharding = NamedSharding(mesh, P("data"))



def param_sharding(a):
  if layout == "fsdp":
    return NamedSharding(mesh, P("data", *([None] * (a.ndim - 1))))
  return replicated


def put(a):
  """A global array from the host copy every process has (each keeps its own shards)."""
  sharding = param_sharding(a)
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


tx = common.make_tx()
params = jax.tree.map(put, common.init_params())
state = tx.init(params)


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


nadam_state = state[1][0]
shardings_follow_params = all(
    m.sharding.is_equivalent_to(p.sharding, p.ndim) and v.sharding.is_equivalent_to(p.sharding,
                                                                                     p.ndim)
    for p, m, v in zip(jax.tree.leaves(params), jax.tree.leaves(nadam_state.m),
                       jax.tree.leaves(nadam_state.v)))
# Per param: elements in this process's shards / elements of the param (0.5 for fsdp: half).
local_fraction = max(sum(s.data.size for s in a.addressable_shards) / a.size
                     for a in jax.tree.leaves(params))
if layout == "fsdp":
  params, state = multihost_utils.process_allgather((params, state), tiled=True)
else:
  params, state = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), (params, state))

arrays = {"params" + k: v for k, v in common.flat_arrays(params).items()}
arrays.update({"state" + k: v for k, v in common.flat_arrays(state).items()})
np.savez(out_path, **arrays)
common.emit({
    "layout": layout, "shardings_follow_params": shardings_follow_params,
    "count_replicated": nadam_state.count.sharding.is_fully_replicated,
    "local_fraction": local_fraction,
    "process_index": jax.process_index(), "process_count": jax.process_count(),
    "device_count": n_global, "local_device_count": n_local,
    "backend": jax.default_backend(), "jax": jax.__version__,
    "collectives": jax.config.jax_cpu_collectives_implementation,
    "losses": losses,
})
jax.distributed.shutdown()
