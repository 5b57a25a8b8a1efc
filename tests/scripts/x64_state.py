"""float64 optimizer state through every reader and writer, under ``jax_enable_x64``.

Run in a fresh interpreter by `tests/core/test_precision.py` (x64 is process-global);
prints one ``RESULT {json}`` line: torch NAdam in float64 against the float64
formulas, and round trips of a float64 state through `optax_nadam.safety`,
`grouped` / `ungroup_state`, the Keras front's get/set_weights, torch import and
export (`optax_nadam.interop`) and orbax.
"""

import json
import tempfile

import numpy as np

from tests.helpers import reference as ref
from tests.scripts.x64_precision import float64_problems, nadam_for


def _torch_float64():
  p, g, _ = float64_problems()["peers_md"]
  hp = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-7, momentum_decay=0.004)
  reference = ref.reference_nadam(p, g, **hp)
  ours = ref.run_ours(nadam_for(hp), p, g)
  torch_hist = ref.run_torch(p, g, **hp)
  return {"ours_error": ref.max_abs_error(ours, reference),
          "torch_error": ref.max_abs_error(torch_hist, reference),
          "ours_vs_torch": ref.max_abs_error(ours, [[np.asarray(x) for x in s]
                                                     for s in torch_hist]),
          "torch_dtype": str(torch_hist[-1][0].dtype)}


def _state_round_trips():
  """safety, grouped, Keras front, torch interop and orbax with float64 state."""
  import jax
  import jax.numpy as jnp
  import optax
  import torch

  import optax_nadam
  from optax_nadam import interop, safety
  from optax_nadam import keras as okeras

  p, g, _ = float64_problems()["peers_md"]
  params = [jnp.asarray(x) for x in p]
  tx = optax_nadam.nadam(1e-2, eps=1e-8)

  def train(tx, params, steps):
    state = tx.init(params)
    step = jax.jit(lambda ps, s, gs: tx.update(gs, s, ps))
    for gs in g[:steps]:
      u, state = step(params, state, [jnp.asarray(x) for x in gs])
      params = optax.apply_updates(params, u)
    return params, state

  def same_bits(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb))

  out = {}
  trained, state = train(tx, params, 5)
  out["mu_product_dtype"] = str(state[0].mu_product.dtype)
  like = jax.eval_shape(tx.init, params)
  arrays = safety.to_arrays(state)
  out["safety_round_trip"] = same_bits(safety.from_arrays(arrays, like), state)
  old = dict(arrays, **{"[0].mu_product": arrays["[0].mu_product"].astype(np.float32)})
  widened = safety.from_arrays(old, like)
  out["safety_widens_float32_mu_product"] = (
      str(widened[0].mu_product.dtype), float(widened[0].mu_product)
      == float(np.float32(state[0].mu_product)))
  try:  # a float32 mu-product is not what float64 params' state holds
    safety.check_state((state[0]._replace(mu_product=np.float32(1.0)),) + tuple(state[1:]),
                       like)
    out["check_state_refuses_float32_mu_product"] = False
  except ValueError as e:
    out["check_state_refuses_float32_mu_product"] = "mu_product" in str(e)

  grouped = optax_nadam.grouped(tx)
  g_params, g_state = train(grouped, params, 5)
  ungrouped = optax_nadam.ungroup_state(g_state, params)
  out["grouped"] = {
      "mu_product_dtype": str(ungrouped[0].mu_product.dtype),
      "vs_plain": ref.max_abs_error([[np.asarray(x) for x in g_params]],
                                    [[np.asarray(x) for x in trained]]),
      "regroup_same_bits": same_bits(optax_nadam.group_state(ungrouped, params), g_state),
  }

  kopt = okeras.Nadam(learning_rate=1e-2, epsilon=1e-8)
  k_params, k_state = train(kopt, params, 5)
  weights = kopt.get_weights(k_state)
  restored = kopt.set_weights(kopt.init(params), weights)
  out["keras"] = {
      "weights_dtypes": [str(w.dtype) for w in weights[:3]],
      "set_get_same_bits": same_bits(kopt.get_weights(restored), weights),
      "vs_nadam": ref.max_abs_error([[np.asarray(x) for x in k_params]],
                                    [[np.asarray(x) for x in trained]]),
  }

  # torch float64: steps in torch, import, export back; nothing may move.
  tparams = [torch.tensor(np.array(x), requires_grad=True) for x in p]
  topt = torch.optim.NAdam(tparams, lr=1e-2, eps=1e-8)
  for gs in g[:5]:
    for tp, gx in zip(tparams, gs):
      tp.grad = torch.tensor(np.array(gx))
    topt.step()
  before = {k: {n: t.clone() for n, t in v.items()} for k, v in topt.state_dict()["state"].items()}
  imported = interop.state_from_torch(topt, tx, params)
  topt2 = torch.optim.NAdam([torch.zeros_like(t) for t in tparams], lr=1e-2, eps=1e-8)
  interop.state_to_torch(imported, params, topt2)
  after = topt2.state_dict()["state"]
  out["torch"] = {
      "mu_product_dtype_torch": str(before[0]["mu_product"].dtype),
      "imported_mu_product_dtype": str(imported[0].mu_product.dtype),
      "imported_exact": all(
          np.array_equal(np.asarray(m), before[i]["exp_avg"].numpy())
          and np.array_equal(np.asarray(v), before[i]["exp_avg_sq"].numpy())
          and float(imported[0].mu_product) == float(before[i]["mu_product"])
          for i, (m, v) in enumerate(zip(imported[0].m, imported[0].v))),
      "exported_exact": all(
          torch.equal(after[i][k].to(torch.float64), before[i][k].to(torch.float64))
          for i in before for k in ("exp_avg", "exp_avg_sq", "mu_product", "step")),
      "exported_dtypes": sorted({str(after[0][k].dtype) for k in ("exp_avg", "mu_product")}),
  }
  # ours -> torch -> ours: our float64 mu_product survives the round trip.
  topt3 = torch.optim.NAdam([torch.zeros_like(t) for t in tparams], lr=1e-2, eps=1e-8)
  interop.state_to_torch(state, params, topt3)
  back = interop.state_from_torch(topt3, tx, params)
  out["torch"]["ours_round_trip_same_bits"] = same_bits(back, state)

  import orbax.checkpoint as ocp

  with tempfile.TemporaryDirectory() as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(f"{tmp}/ckpt", state)
      ckptr.wait_until_finished()
      restored = ckptr.restore(f"{tmp}/ckpt", jax.eval_shape(tx.init, params))
  out["orbax_same_bits"] = same_bits(restored, state)
  return out


def main():
  import jax

  jax.config.update("jax_enable_x64", True)
  result = {"torch_float64": _torch_float64(), "state": _state_round_trips()}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
