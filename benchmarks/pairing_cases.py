"""The pairing cases of issue 23 that were silently wrong: the gap to torch, or the refusal.

    python -m benchmarks.pairing_cases

Four bias-free q, k, v, o projections (equal shapes, registered in an order
their sorted names do not follow) take 5 real torch NAdam steps; each case
moves the run across (export, state_from_torch with a dict, a plain sorted dict
as the model, a DCP checkpoint keyed by names) and both continue 20 steps on
the same gradients. Prints the gap (`tests.helpers.reference.gap`, relative to
each parameter's scale: float32 rounding is ~1e-6, a moment on the wrong
parameter ~1e-1) or the start of the refusal. Needs the `test` extra (torch).
"""

import jax
import numpy as np
import torch

import optax_nadam
from optax_nadam import interop
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, ModuleRun, nested

STEPS = 5

def proj():
  m = torch.nn.Module()
  for n in "qkvo":
    setattr(m, n, torch.nn.Linear(4, 4, bias=False))
  return m

def trained(spec=None):
  torch.manual_seed(0)
  run = ModuleRun(proj(), opt_spec=spec)
  run.run(run.grads[:STEPS])
  return run

def cont(run, params, tx, state):
  ours = continue_optax(tx, state, params, [nested(g) for g in run.grads[STEPS:]])
  return gap(ours, run.run(run.grads[STEPS:]))

def report(label, f):
  try:
    print(f"{label}: gap {f():.2e}")
  except ValueError as e:
    print(f"{label}: refused ({str(e)[:90]}...)")

def export_case():
  torch.manual_seed(0)
  run = ModuleRun(proj(), opt_spec=lambda n: list(n.items()))
  tx = optax_nadam.nadam(LR, eps=1e-8)
  p0 = nested({n: p.detach().numpy().copy() for n, p in run.named.items()})
  hist, state = continue_optax(tx, tx.init(p0), p0, [nested(g) for g in run.grads[:STEPS]],
                               with_state=True)
  mid = jax.tree.unflatten(jax.tree.structure(p0), hist[-1])
  with torch.no_grad():
    for n, p in run.named.items():
      a, b = n.split(".")
      p.copy_(torch.from_numpy(np.array(mid[a][b])))
  interop.state_to_torch(state, mid, run.opt)
  return cont(run, mid, tx, state)

def dict_case():
  run = trained()
  mid = nested({n: p.detach().numpy().copy() for n, p in run.named.items()})
  tx = optax_nadam.nadam(LR, eps=1e-8)
  return cont(run, mid, tx, interop.state_from_torch(run.opt, tx, mid))

def plain_case():
  run = trained()
  sd = run.module.state_dict()
  plain = {k: sd[k].clone() for k in sorted(sd)}
  params, tx, state = interop.resume_from_torch(
      {"model": plain, "optimizer": run.opt.state_dict()}, run.like())
  return cont(run, params, tx, state)

def dcp_case():
  import tempfile

  import torch.distributed.checkpoint as dcp
  from torch.distributed.checkpoint.state_dict import get_state_dict

  tmp = tempfile.mkdtemp() + "/dcp"
  run = trained(lambda named: [named[n] for n in ("v.weight", "q.weight", "o.weight", "k.weight")])
  msd, osd = get_state_dict(run.module, run.opt)
  dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=tmp)
  params, tx, state = interop.resume_from_torch(tmp, run.like())
  return cont(run, params, tx, state)

def main():
  report("1 state_to_torch, NAdam(model.named_parameters()), dict params", export_case)
  report("2 state_from_torch(live NAdam, dict params)", dict_case)
  report("3 plain sorted dict as the model", plain_case)
  report("4 DCP get_state_dict, one group in another order", dcp_case)


if __name__ == "__main__":
  import warnings

  warnings.simplefilter("ignore", UserWarning)  # DCP: "assuming ... a single process"
  main()
