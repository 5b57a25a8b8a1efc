"""Continuing a saved torch run from its `torch.save` file (interop.torch._load).

Every file is written by the real torch after real NAdam steps; optax resumes
from it and must stay within 1e-5 of torch continuing the same run for 20
more steps. Bad files are refused with a clear error and change nothing.
"""

import os
import pickle

import jax
import numpy as np
import pytest
import torch

import optax_nadam
from optax_nadam import interop
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, MORE, TOL, TorchRun, problem, saved


def _model_dict(run):
  return {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": p.detach().clone()
          for i, p in enumerate(run.ps)}


LAYOUTS = {
    "optimizer state dict alone": (None, None),
    "model and optimizer": (lambda run, sd: {"model": _model_dict(run), "optimizer": sd,
                                             "epoch": 3, "scheduler": {"last_epoch": 3}}, None),
    "lightning-style names": (lambda run, sd: {"model_state_dict": _model_dict(run),
                                               "optimizer_state_dict": sd}, None),
    "explicit key": (lambda run, sd: {"weights": _model_dict(run), "opt": sd}, ("weights", "opt")),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_resume_from_a_torch_file(tmp_path, name):
  checkpoint, keys = LAYOUTS[name]
  path, run, mid, grads = saved(tmp_path, checkpoint=checkpoint)
  model_key, opt_key = keys or (None, None)
  tx = optax_nadam.nadam(LR, eps=1e-8)
  if checkpoint is not None:
    params = interop.params_from_torch(path, [np.zeros_like(p) for p in mid], key=model_key)
    jax.tree.map(np.testing.assert_array_equal, params, mid)
  state = interop.state_from_torch(str(path) if name == "explicit key" else path, tx, mid,
                                   key=opt_key)
  ours = continue_optax(tx, state, mid, grads)
  theirs = run.run(grads)
  measured = gap(ours, theirs)
  print(f"\nresume gap from a torch file ({name}): {measured:.2e} after {MORE} steps")
  assert measured <= TOL


def test_resume_from_a_float64_torch_run(tmp_path):
  params, grads = problem(5 + MORE, dtype=np.float64)
  run = TorchRun(params)
  run.run(grads[:5])
  torch.save(run.opt.state_dict(), tmp_path / "f64.pt")
  mid = [p.astype(np.float32) for p in run.params()]
  tx = optax_nadam.nadam(LR, eps=1e-8)
  state = interop.state_from_torch(tmp_path / "f64.pt", tx, mid)
  assert state[0].m[0].dtype == np.float32
  ours = continue_optax(tx, state, mid, grads[5:])
  measured = gap(ours, run.run(grads[5:]))
  print(f"\nresume gap from a float64 torch run into float32: {measured:.2e}")
  assert measured <= TOL


def _unchanged(path, like, call):
  """`call` raises; the file's bytes and `like` are as before."""
  before = path.read_bytes() if path.exists() else None
  copies = [np.array(x) for x in like]
  with pytest.raises(Exception) as raised:
    call()
  assert (path.read_bytes() if path.exists() else None) == before
  for a, b in zip(like, copies):
    np.testing.assert_array_equal(a, b)
  return raised


class _Payload:
  """Any class: unpickling it would import and run code from the file."""

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_bad_files_are_refused_and_change_nothing(tmp_path):
  path, run, mid, _ = saved(tmp_path)
  tx = optax_nadam.nadam(LR, eps=1e-8)
  missing = tmp_path / "nope.pt"
  raised = _unchanged(missing, mid, lambda: interop.state_from_torch(missing, tx, mid))
  assert raised.type is FileNotFoundError and "nope.pt" in str(raised.value)

  other = tmp_path / "weights.npz"
  np.savez(other, a=np.ones(3))
  raised = _unchanged(other, mid, lambda: interop.params_from_torch(other, mid))
  assert raised.match(r"weights\.npz' is not a readable torch\.save file")

  text = tmp_path / "notes.pt"
  text.write_text("hello, not a checkpoint")
  raised = _unchanged(text, mid, lambda: interop.state_from_torch(text, tx, mid))
  assert raised.match(r"notes\.pt' is not a readable torch\.save file")

  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  raised = _unchanged(truncated, mid, lambda: interop.state_from_torch(truncated, tx, mid))
  assert raised.match(r"truncated\.pt' is not a readable torch\.save file.*(zip|archive)")

  evil = tmp_path / "evil.pt"
  torch.save({"optimizer": run.opt.state_dict(), "hook": _Payload()}, evil)
  raised = _unchanged(evil, mid, lambda: interop.state_from_torch(evil, tx, mid))
  assert raised.match(r"evil\.pt' holds Python objects .*weights_only=True\) refused it "
                      r"\(unpickling them could run code\): .*GLOBAL posix\.system")
  with pytest.raises(pickle.UnpicklingError):  # torch itself refuses it the same way
    torch.load(evil, weights_only=True)


def test_another_optimizers_file_is_named(tmp_path):
  params, grads = problem(3)
  ps = [torch.tensor(p, requires_grad=True) for p in params]
  adam = torch.optim.Adam(ps, lr=LR)
  for gs in grads:
    for p, g in zip(ps, gs):
      p.grad = torch.tensor(g)
    adam.step()
  torch.save({"optimizer": adam.state_dict()}, tmp_path / "adam.pt")
  with pytest.raises(ValueError, match=r"adam\.pt.*param_groups\[0\] has no 'momentum_decay': "
                     "not a torch.optim.NAdam"):
    interop.state_from_torch(tmp_path / "adam.pt", optax_nadam.nadam(LR), params)
  sd = adam.state_dict()
  for g in sd["param_groups"]:
    g["momentum_decay"] = 0.004  # pretend: the slots still give it away
  with pytest.raises(ValueError, match=r"missing \['mu_product'\].*torch Adam keeps no "
                     r"mu_product: this is not a NAdam state"):
    interop.state_from_torch(sd, optax_nadam.nadam(LR), params)


def test_a_checkpoint_that_does_not_fit_like_is_named(tmp_path):
  path, run, mid, _ = saved(tmp_path, checkpoint=lambda run, sd: {"model": _model_dict(run),
                                                                   "optimizer": sd})
  like = [np.zeros_like(p) for p in mid]
  with pytest.raises(ValueError, match=r"ckpt\.pt'\['model'\] has 4 parameter entries .* has 3"):
    interop.params_from_torch(path, like[:3])
  with pytest.raises(ValueError, match=r"ckpt\.pt'\['model'\]: layer0\.weight \(params leaf "
                     r"\['layer0'\]\['weight'\]\) has shape \(6, 4\) .*leaf's \(4, 6\)"):
    interop.params_from_torch(path, {"layer0": {"weight": like[0].T, "bias": like[1]},
                                     "layer1": {"weight": like[2], "bias": like[3]}})
  with pytest.raises(ValueError, match=r"layer0\.weight \(params leaf \[0\]\) has dtype "
                     r"float32; the params leaf has int32"):
    interop.params_from_torch(path, [like[0].astype(np.int32)] + like[1:])
  with pytest.raises(ValueError, match=r"slots for 4 variables but params has 3 leaves"):
    interop.state_from_torch(path, optax_nadam.nadam(LR, eps=1e-8), mid[:3])
  with pytest.raises(ValueError, match=r"holds no model state dict .*pass key="):
    interop.params_from_torch({"optimizer": run.opt.state_dict()}, like)
  with pytest.raises(ValueError, match=r"has no entry 'net'"):
    interop.params_from_torch(path, like, key="net")


def test_non_finite_weights_are_named(tmp_path):
  params, _ = problem(1)
  sd = {"fc.weight": torch.tensor(params[0]), "fc.bias": torch.full((6,), float("nan"))}
  torch.save(sd, tmp_path / "nan.pt")
  with pytest.raises(ValueError, match=r"nan\.pt'.*fc\.bias \(params leaf \[1\]\) holds NaN"):
    interop.params_from_torch(tmp_path / "nan.pt", [params[0], params[1]])
