"""nadam under pmap, jit + NamedSharding (data parallel, FSDP) and shard_map on 8 CPU devices.

Usage: ``_distributed_sharding.py MODE STEPS`` with MODE one of ``pmap``,
``data_parallel``, ``fsdp``, ``shard_map``; run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (see `tests/helpers/subproc.py`).
Prints one ``RESULT {json}`` line with what `tests/distributed/test_distributed.py` asserts:
the gap to the single-device full-batch run, the shardings of params and of the
optimizer state, and the collectives in the compiled HLO.
"""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_nadam import ScaleByNadamState, nadam
from tests.scripts import distributed_common as common

MODE, STEPS = sys.argv[1], int(sys.argv[2])
N_DEV = jax.device_count()
assert N_DEV == 8, f"expected 8 simulated devices, got {N_DEV}"

_COLLECTIVE = re.compile(
    r"\s(all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute|collective-broadcast)"
    r"(?:-start)?\(")


def collectives(hlo: str) -> dict:
  """Number of each collective op in compiled HLO text."""
  counts = {}
  for name in _COLLECTIVE.findall(hlo):
    counts[name] = counts.get(name, 0) + 1
  return counts


def nadam_state(state) -> ScaleByNadamState:
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, ScaleByNadamState))
           if isinstance(s, ScaleByNadamState)]
  assert len(found) == 1, found
  return found[0]


def spec(a) -> str:
  s = a.sharding
  return str(s.spec) if isinstance(s, NamedSharding) else type(s).__name__


def sharding_report(params, state) -> dict:
  """Per leaf: the param's spec, m's and v's, and whether each is equivalent to the param's."""
  ns = nadam_state(state)
  leaves = {}
  for (path, p), m, v in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                             jax.tree.leaves(ns.m), jax.tree.leaves(ns.v)):
    leaves[jax.tree_util.keystr(path)] = {
        "param": spec(p), "m": spec(m), "v": spec(v),
        "m_same": m.sharding.is_equivalent_to(p.sharding, p.ndim),
        "v_same": v.sharding.is_equivalent_to(p.sharding, p.ndim),
    }
  return {
      "leaves": leaves,
      "count": spec(ns.count), "mu_product": spec(ns.mu_product),
      "count_replicated": ns.count.sharding.is_fully_replicated
      and len(ns.count.sharding.device_set) == N_DEV,
      "mu_product_replicated": ns.mu_product.sharding.is_fully_replicated
      and len(ns.mu_product.sharding.device_set) == N_DEV,
  }


def gaps(params, state, ref_params, ref_state) -> dict:
  return {
      "params_gap": common.max_rel_diff(common.flat_arrays(params),
                                        common.flat_arrays(ref_params)),
      "state_gap": common.max_rel_diff(common.flat_arrays(state), common.flat_arrays(ref_state)),
      "count": int(nadam_state(state).count),
  }


def train_step(tx):
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(common.loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss
  return step


def optimizer_step(tx):
  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def run_pmap():
  tx = common.make_tx()
  # A leading axis of size 8: pmap puts one copy on each device.
  params = jax.tree.map(lambda a: np.broadcast_to(a, (N_DEV, *a.shape)), common.init_params())
  state = jax.pmap(tx.init)(params)

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(common.loss_fn)(params, x, y)
    grads = jax.lax.pmean(grads, "batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, jax.lax.pmean(loss, "batch")

  pstep = jax.pmap(step, axis_name="batch")
  x, y = common.make_batches(STEPS)
  for i in range(STEPS):
    params, state, _ = pstep(params, state, x[i].reshape(N_DEV, -1, common.N_IN),
                             y[i].reshape(N_DEV, -1))
  flat = {**common.flat_arrays(params), **{"state" + k: v for k, v in
                                            common.flat_arrays(state).items()}}
  # Bit-identical on every replica: compare each replica with replica 0.
  replicas_identical = all(np.array_equal(a[r], a[0]) for a in flat.values() for r in range(N_DEV))
  ref_params, ref_state, _ = common.reference_run(STEPS)
  first = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
  return {"replicas_identical": replicas_identical,
          "n_replicas": int(jax.tree.leaves(params)[0].shape[0]),
          **gaps(first(params), first(state), ref_params, ref_state)}


def run_jit(fsdp: bool):
  """jit + NamedSharding on a classic (Auto axes) mesh; state from an eager `tx.init`."""
  tx = common.make_tx()
  mesh = Mesh(np.array(jax.devices()), ("d",))
  batch = NamedSharding(mesh, P("d"))
  if fsdp:
    # Every parameter split over all 8 devices along its first axis.
    param_sharding = lambda a: NamedSharding(mesh, P("d", *([None] * (a.ndim - 1))))  # noqa: E731
  else:
    param_sharding = lambda a: NamedSharding(mesh, P())  # noqa: E731
  params = jax.tree.map(lambda a: jax.device_put(a, param_sharding(a)), common.init_params())
  state = tx.init(params)
  at_init = sharding_report(params, state)
  # For the record (printed, not asserted: it is jax's choice): `jax.jit(tx.init)` on an
  # Auto-axes mesh without out_shardings, where zeros depend on no input.
  jit_init = sharding_report(params, jax.jit(tx.init)(params))["leaves"]
  jit_init = {k: v["m"] for k, v in jit_init.items()}

  step = jax.jit(train_step(tx))
  x, y = common.make_batches(STEPS)
  xs = [jax.device_put(x[i], batch) for i in range(STEPS)]
  ys = [jax.device_put(y[i], batch) for i in range(STEPS)]
  for i in range(STEPS):
    params, state, _ = step(params, state, xs[i], ys[i])
  result = {"at_init": at_init, "after_steps": sharding_report(params, state),
            "auto_mesh_jit_init_m": jit_init}
  result["train_step_collectives"] = collectives(
      step.lower(params, state, xs[0], ys[0]).compile().as_text())

  # The optimizer update alone, with the shardings pinned: for nadam alone and for the
  # clipped chain (whose global norm is one scalar all-reduce).
  for name, opt in (("nadam", nadam(common.LEARNING_RATE)), ("chain", tx)):
    opt_state = opt.init(params)
    shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state, params))
    shardings = (shardings[0], jax.tree.map(
        lambda a: a.sharding if a.ndim else NamedSharding(mesh, P()), opt_state), shardings[2])
    update = jax.jit(optimizer_step(opt), in_shardings=shardings,
                     out_shardings=(shardings[2], shardings[1]))
    result[f"{name}_update_collectives"] = collectives(
        update.lower(params, opt_state, params).compile().as_text())
    new_params, new_state = update(params, opt_state, params)
    result[f"{name}_update_shardings"] = sharding_report(new_params, new_state)

  ref_params, ref_state, _ = common.reference_run(STEPS)
  result.update(gaps(params, state, ref_params, ref_state))
  if fsdp:
    result["explicit"] = run_explicit_fsdp()
  return result


def run_explicit_fsdp():
  """jax 0.10's default mesh (`jax.make_mesh`: Explicit axes) under `jax.set_mesh`.

  Here `jax.jit(tx.init)` itself gives m and v the params' shardings (sharding in
  types), and the jitted update needs no pinned shardings.
  """
  opt = nadam(common.LEARNING_RATE)
  mesh = jax.make_mesh((N_DEV,), ("d",))
  with jax.set_mesh(mesh):
    params = jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P("d", *([None] * (a.ndim - 1))))),
        common.init_params())
    state = jax.jit(opt.init)(params)
    at_init = sharding_report(params, state)
    grads = jax.tree.map(lambda a: a * 0.5, params)
    update = jax.jit(optimizer_step(opt))
    hlo = update.lower(grads, state, params).compile().as_text()
    new_params, new_state = update(grads, state, params)
    out = {"axis_types": str(mesh.axis_types), "at_init": at_init,
           "after_update": sharding_report(new_params, new_state),
           "update_collectives": collectives(hlo)}
  # The same update on one device, unsharded.
  host = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), t)  # noqa: E731
  ref_params, ref_state = jax.jit(optimizer_step(opt))(
      host(grads), opt.init(host(params)), host(params))
  out.update(gaps(new_params, new_state, ref_params, ref_state))
  return out


def shard_map_step(tx, mesh, explicit_psum: bool):
  """Data parallel in `jax.shard_map`, params and state replicated, batch split.

  With ``check_vma=False`` each device's gradient is its own and we psum it
  ourselves. With ``check_vma=True`` (the default) jax knows the params are
  replicated and the transpose of their implicit broadcast is already a psum
  over the devices: an explicit psum there would count every gradient 8 times.
  """

  def local_step(params, state, x, y):
    loss, grads = jax.value_and_grad(common.loss_fn)(params, x, y)
    # Each device's loss is the mean over its 1/8 of the batch: the global mean is sum / 8.
    if explicit_psum:
      grads = jax.tree.map(lambda g: jax.lax.psum(g, "d"), grads)
    grads = jax.tree.map(lambda g: g / N_DEV, grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, jax.lax.psum(loss, "d") / N_DEV

  return jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("d"), P("d")),
                               out_specs=(P(), P(), P()), check_vma=not explicit_psum))


def run_shard_map():
  tx = common.make_tx()
  mesh = Mesh(np.array(jax.devices()), ("d",))
  x, y = common.make_batches(STEPS)
  ref_params, ref_state, _ = common.reference_run(STEPS)
  result = {}
  for explicit_psum in (True, False):
    step = shard_map_step(tx, mesh, explicit_psum)
    params = jax.tree.map(jnp.asarray, common.init_params())
    state = tx.init(params)
    for i in range(STEPS):
      params, state, _ = step(params, state, x[i], y[i])
    result["explicit_psum" if explicit_psum else "check_vma"] = gaps(
        params, state, ref_params, ref_state)

  # ZeRO-style: the optimizer update alone in shard_map, each device holding 1/8 of every
  # param, gradient and moment; count and mu_product are replicated scalars.
  opt = nadam(common.LEARNING_RATE)
  pspec = jax.tree.map(lambda a: P("d", *([None] * (a.ndim - 1))), params)
  sspec = jax.tree.map(lambda _: P(), opt.init(params))
  sspec = sspec[0]._replace(m=pspec, v=pspec), sspec[1]
  grads = jax.grad(common.loss_fn)(params, x[0], y[0])
  update = jax.jit(jax.shard_map(optimizer_step(opt), mesh=mesh, in_specs=(pspec, sspec, pspec),
                                 out_specs=(pspec, sspec)))
  sharded = update(grads, opt.init(params), params)
  reference = jax.jit(optimizer_step(opt))(grads, opt.init(params), params)
  result["zero_gap"] = common.max_rel_diff(common.flat_arrays(sharded),
                                                  common.flat_arrays(reference))
  result["zero_update_collectives"] = collectives(
      update.lower(grads, opt.init(params), params).compile().as_text())
  return result


if __name__ == "__main__":
  runners = {"pmap": run_pmap, "data_parallel": lambda: run_jit(False),
             "fsdp": lambda: run_jit(True), "shard_map": run_shard_map}
  common.emit({"mode": MODE, "device_count": N_DEV, **runners[MODE]()})
