"""nadam in data-parallel and sharded training on 8 simulated CPU devices, and multi-process.

Each test runs a script of ``tests/`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (so the flag never reaches
this process) and asserts on the JSON line it prints. The problem (a 16-32-8
MLP, 64 examples a step, ``chain(clip_by_global_norm, nadam(1e-2))``) is in
`tests/scripts/distributed_common.py`; every run is compared with the single-device
full-batch plain-optax run of the same init and batches.
"""

import numpy as np
import pytest

from tests.helpers import subproc as _subproc
from tests.scripts import distributed_common as common

STEPS = 4
# Float32 sums in a different order (per-device partial sums, then an all-reduce) move the
# result by a few ulps; nadam's first steps are ~lr * sign(g), which does not amplify that.
TOL = 1e-5


def _assert_close_to_reference(result, what=""):
  assert result["count"] == STEPS
  assert result["params_gap"] <= TOL, (what, result["params_gap"])
  assert result["state_gap"] <= TOL, (what, result["state_gap"])


def _assert_state_sharded_like_params(report, replicated_scalars=True):
  assert len(report["leaves"]) == 4
  for path, leaf in report["leaves"].items():
    assert leaf["m_same"] and leaf["v_same"], (path, leaf)
  if replicated_scalars:
    assert report["count_replicated"] and report["mu_product_replicated"], report


@pytest.mark.slow
def test_pmap_pmean_replicas_identical_and_equal_single_device():
  result = _subproc.run_script("distributed_sharding", ["pmap", STEPS])
  print("pmap:", result)
  assert result["n_replicas"] == 8
  # Params and every optimizer-state leaf (count, mu_product, m, v) bit-identical on all 8.
  assert result["replicas_identical"]
  _assert_close_to_reference(result, "pmap")


@pytest.mark.slow
def test_jit_named_sharding_data_parallel():
  result = _subproc.run_script("distributed_sharding", ["data_parallel", STEPS])
  print("data parallel:", {k: v for k, v in result.items() if "gap" in k or "collect" in k})
  # Eager tx.init: m, v replicated like the params; count and mu_product are uncommitted
  # scalars that the first jitted step replicates over the mesh.
  _assert_state_sharded_like_params(result["at_init"], replicated_scalars=False)
  _assert_state_sharded_like_params(result["after_steps"])
  for leaf in result["after_steps"]["leaves"].values():
    assert leaf["param"] == "P()"
  # Batch split, params replicated: the only collective is the all-reduce of the gradients.
  assert set(result["train_step_collectives"]) == {"all-reduce"}, result["train_step_collectives"]
  assert result["nadam_update_collectives"] == {}
  _assert_close_to_reference(result, "data parallel")


@pytest.mark.slow
def test_jit_named_sharding_fsdp_state_follows_params_without_all_gather():
  result = _subproc.run_script("distributed_sharding", ["fsdp", STEPS])
  print("fsdp:", {k: v for k, v in result.items() if "gap" in k or "collect" in k})
  print("fsdp: m after jax.jit(tx.init) on an Auto mesh, no out_shardings:",
        result["auto_mesh_jit_init_m"])
  for report in ("at_init", "after_steps", "nadam_update_shardings", "chain_update_shardings"):
    _assert_state_sharded_like_params(result[report], replicated_scalars=report != "at_init")
    for path, leaf in result[report]["leaves"].items():
      assert leaf["param"].startswith("P('d'"), (report, path, leaf)  # really sharded
  # The forward pass gathers the params (that is FSDP), but the optimizer update itself
  # is elementwise on each shard: no all-gather, all-to-all or permute of params or state.
  assert result["train_step_collectives"].get("all-gather", 0) > 0
  assert result["nadam_update_collectives"] == {}, result["nadam_update_collectives"]
  # clip_by_global_norm adds exactly one (scalar) all-reduce, nothing else.
  assert result["chain_update_collectives"] == {"all-reduce": 1}, result["chain_update_collectives"]
  _assert_close_to_reference(result, "fsdp")
  # jax 0.10's default mesh (Explicit axes): jit(tx.init) alone already shards m, v like
  # the params and replicates count and mu_product; the jitted update has no collective.
  explicit = result["explicit"]
  assert "Explicit" in explicit["axis_types"]
  _assert_state_sharded_like_params(explicit["at_init"])
  _assert_state_sharded_like_params(explicit["after_update"])
  assert explicit["update_collectives"] == {}
  assert explicit["params_gap"] <= TOL and explicit["state_gap"] <= TOL, explicit


@pytest.mark.slow
def test_shard_map_psum_equals_single_device():
  result = _subproc.run_script("distributed_sharding", ["shard_map", STEPS])
  print("shard_map:", result)
  _assert_close_to_reference(result["explicit_psum"], "explicit psum, check_vma=False")
  _assert_close_to_reference(result["check_vma"], "implicit psum, check_vma=True")
  # nadam's update alone on 1/8 shards of params, grads, m and v: the unsharded result to one
  # float32 rounding (a leaf split into 1-element shards is compiled differently by XLA:CPU).
  assert result["zero_gap"] <= 2.0 ** -23
  assert result["zero_update_collectives"] == {}


def _run_controllers(n_proc, steps, layout, outs):
  """Starts ``n_proc`` controllers on a free port; retries once if the port was taken meanwhile."""
  for attempt in range(2):
    port = _subproc.free_port()
    procs = [_subproc.start_script("distributed_multiproc",
                                   [i, n_proc, port, outs[i], steps, layout], devices=4)
             for i in range(n_proc)]
    try:
      return [_subproc.finish(p, timeout=150) for p in procs]
    except AssertionError as e:
      if attempt or "address already in use" not in str(e).lower():
        raise
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_multi_process_two_controllers_on_cpu(layout, tmp_path):
  """Two processes x 4 CPU devices, one global mesh, gloo collectives, 3 steps.

  ``dp``: params and state replicated on all 8 devices. ``fsdp``: every param, m and v
  split over all 8, so each process holds half; gathered with `process_allgather` at the end.
  """
  steps, n_proc = 3, 2
  outs = [tmp_path / f"process{i}.npz" for i in range(n_proc)]
  results = _run_controllers(n_proc, steps, layout, outs)
  print(f"multi-process {layout}:", results)
  for i, r in enumerate(results):
    assert (r["process_index"], r["process_count"]) == (i, n_proc)
    assert (r["device_count"], r["local_device_count"]) == (8, 4)
    assert r["backend"] == "cpu"
    assert r["shardings_follow_params"] and r["count_replicated"]
    # fsdp: this process holds exactly its 4 of the 8 shards of every param.
    assert r["local_fraction"] == (0.5 if layout == "fsdp" else 4.0)
  # Both controllers end with the same bits (params and every state leaf) and losses.
  assert results[0]["losses"] == results[1]["losses"]
  arrays = [dict(np.load(o)) for o in outs]
  assert sorted(arrays[0]) == sorted(arrays[1])
  for key in arrays[0]:
    assert np.array_equal(arrays[0][key], arrays[1][key]), key
  # And they equal the single-process, single-device full-batch run.
  ref_params, ref_state, ref_losses = common.reference_run(steps)
  ref = {**{"params" + k: v for k, v in common.flat_arrays(ref_params).items()},
         **{"state" + k: v for k, v in common.flat_arrays(ref_state).items()}}
  gap = common.max_rel_diff(arrays[0], ref)
  print(f"multi-process {layout}: both processes bit-identical; gap to single device {gap:.2e}")
  assert gap <= TOL
  np.testing.assert_allclose(results[0]["losses"], ref_losses, rtol=TOL)
  assert int(arrays[0]["state[1][0].count"]) == steps
