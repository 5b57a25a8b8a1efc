"""orbax-checkpoint: save nadam training mid-way, restore in a fresh process, continue.

Three subprocesses per layout (`tests/scripts/distributed_checkpoint.py`): an
uninterrupted run of TOTAL steps; a run of K steps that saves params + optimizer
state with `ocp.CheckpointManager`; a fresh interpreter that restores into an
abstract target (`jax.ShapeDtypeStruct`s with the target shardings), validates it
with `optax_nadam.safety.check_state` and trains the remaining steps. The resumed
run must end with exactly the bits of the uninterrupted one.
"""

import numpy as np
import pytest

from tests.helpers import subproc as _subproc

TOTAL, K = 10, 4


def _run(action, layout, tmp_path):
  devices = 8 if layout == "fsdp" else 1
  out = tmp_path / f"{action}.npz"
  result = _subproc.run_script(
      "distributed_checkpoint", [action, layout, tmp_path / "ckpt", TOTAL, K, out],
      devices=devices)
  assert result["action"] == action
  return result, dict(np.load(out))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["single", "fsdp"])
def test_restore_in_fresh_process_continues_bit_identically(layout, tmp_path):
  full, full_arrays = _run("full", layout, tmp_path)
  _, saved_arrays = _run("save", layout, tmp_path)
  resumed, resumed_arrays = _run("resume", layout, tmp_path)
  print(layout, "restored step", resumed["restored_step"], "specs", resumed["restored_specs"])

  assert resumed["restored_step"] == K
  # The restored arrays carry the target shardings, and so do the arrays training ends with.
  assert resumed["restored_shardings_match"] and resumed["shardings_match"]
  assert full["shardings_match"]
  if layout == "fsdp":
    specs = resumed["restored_specs"]
    assert specs["['opt_state'][1][0].m['hidden']['w']"] == "P('d', None)"
    assert specs["['opt_state'][1][0].v['out']['b']"] == "P('d',)"
    assert specs["['opt_state'][1][0].count"] == "P()"
    assert specs["['opt_state'][1][0].mu_product"] == "P()"

  assert sorted(resumed_arrays) == sorted(full_arrays)
  assert int(resumed_arrays["['opt_state'][1][0].count"]) == TOTAL
  for key, value in full_arrays.items():
    assert resumed_arrays[key].dtype == value.dtype, key
    assert np.array_equal(resumed_arrays[key], value), key
  # The checkpoint was really taken mid-way: the run went on from a different state.
  assert int(saved_arrays["['opt_state'][1][0].count"]) == K
  assert not np.array_equal(saved_arrays["['params']['hidden']['w']"],
                            full_arrays["['params']['hidden']['w']"])


@pytest.mark.slow
def test_flax_nnx_model_and_optimizer_restore_in_fresh_process(tmp_path):
  # `tests/scripts/distributed_checkpoint_nnx.py`: nnx.state(model) and nnx.state(nnx.Optimizer)
  # saved with ocp.StandardCheckpointer, restored into a model built from another seed.
  def run(action):
    out = tmp_path / f"nnx_{action}.npz"
    result = _subproc.run_script(
        "distributed_checkpoint_nnx", [action, tmp_path / "ckpt", TOTAL, K, out], devices=1)
    return result, dict(np.load(out))

  full, full_arrays = run("full")
  saved, saved_arrays = run("save")
  resumed, resumed_arrays = run("resume")
  assert (saved["step"], resumed["restored_step"], resumed["step"]) == (K, K, TOTAL)
  assert full["step"] == TOTAL
  assert sorted(resumed_arrays) == sorted(full_arrays)
  assert any(".mu_product" in key or "mu_product" in key for key in full_arrays), list(full_arrays)
  for key, value in full_arrays.items():
    assert resumed_arrays[key].dtype == value.dtype, key
    assert np.array_equal(resumed_arrays[key], value), key
  moved = [k for k in full_arrays if k.startswith("['model']")]
  assert moved and any(not np.array_equal(saved_arrays[k], full_arrays[k]) for k in moved)
