"""Every torch layout pairs moments with parameters by proof, in both directions (issue 23).

Each case trains a real torch module with NAdam, saves or exports it the way
its stack does, and then either continues 20 steps within 1e-5 of torch (the
gap of `tests.helpers.reference.gap`) or is refused with a message whose fix,
applied, continues too. The modules have equal-shaped parameters registered in
an order their sorted names do not follow (q, k, v, o), so a pairing by sorted
keys puts moments on the wrong parameter and fails the gap by far.
"""

import collections
import warnings

import jax
import numpy as np
import optax
import pytest
import torch

import optax_nadam
from optax_nadam import interop
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, TOL, ModuleRun, nested, write_safetensors

STEPS = 5


@pytest.fixture(autouse=True)
def _seeded():
  torch.manual_seed(0)


class Attn(torch.nn.Module):
  """Bias-free q, k, v, o projections (equal shapes; sorted: k, o, q, v) and a LayerNorm."""

  def __init__(self):
    super().__init__()
    for name in "qkvo":
      setattr(self, name, torch.nn.Linear(4, 4, bias=False))
    self.ln = torch.nn.LayerNorm(4)


class Proj(torch.nn.Module):
  """Only the four equal-shaped projections: every order fits the shapes."""

  def __init__(self):
    super().__init__()
    for name in "qkvo":
      setattr(self, name, torch.nn.Linear(4, 4, bias=False))


def _trained(opt_spec=None, model=None, skip=(), **kwargs):
  run = ModuleRun(model or Attn(), opt_spec=opt_spec, **kwargs)
  for g in run.grads[:STEPS]:
    run.step([g[n] for n in run.named], skip={i for i, n in enumerate(run.named) if n in skip})
  return run


def _continue(run, params, tx, opt_state, label):
  """Both continue 20 steps on the same gradients; returns the gap (asserted <= TOL)."""
  ours = continue_optax(tx, opt_state, params, [nested(g) for g in run.grads[STEPS:]])
  measured = gap(ours, run.run(run.grads[STEPS:]), label)
  assert measured <= TOL, f"{label}: gap {measured:.2e}"
  return measured


def _weights(run):
  return nested({n: p.detach().numpy().copy() for n, p in run.named.items()})


def _nadam():
  return optax_nadam.nadam(LR, eps=1e-8)


# ------------------------------------------------------------------ 1. export


def _ours_then_torch(opt_spec):
  """Our run for STEPS steps, then a torch module holding its weights and a fresh NAdam."""
  run = ModuleRun(Attn(), opt_spec=opt_spec)
  tx = _nadam()
  params = _weights(run)
  history, state = continue_optax(tx, tx.init(params), params,
                                  [nested(g) for g in run.grads[:STEPS]], with_state=True)
  mid = jax.tree.unflatten(jax.tree.structure(params), history[-1])
  with torch.no_grad():
    for n, p in run.named.items():
      p.copy_(torch.from_numpy(np.array(_leaf(mid, n))))
  return run, tx, mid, state


def _leaf(tree, name):
  for k in name.split("."):
    tree = tree[k]
  return tree


def test_export_pairs_by_the_optimizers_names():
  run, tx, mid, state = _ours_then_torch(lambda named: list(named.items()))
  interop.state_to_torch(state, mid, run.opt)
  _continue(run, mid, tx, state, "export, NAdam(model.named_parameters())")


def test_export_without_names_is_refused_then_param_names_fix_it():
  run, tx, mid, state = _ours_then_torch(None)  # NAdam(model.parameters()): no names
  with pytest.raises(ValueError, match=r"param_names=") as refused:
    interop.state_to_torch(state, mid, run.opt)
  print(f"\nrefused (export, no names): {refused.value}")
  interop.state_to_torch(state, mid, run.opt, param_names=list(run.named))
  _continue(run, mid, tx, state, "export, param_names=")


def test_export_from_a_list_in_the_optimizers_order():
  run, tx, mid, state = _ours_then_torch(None)
  flat = [_leaf(mid, n) for n in run.named]
  m = [_leaf(state[0].m, n) for n in run.named]
  v = [_leaf(state[0].v, n) for n in run.named]
  flat_state = (state[0]._replace(m=m, v=v), *state[1:])
  interop.state_to_torch(flat_state, flat, run.opt)  # a list states the order
  _continue(run, mid, tx, state, "export, a list in the optimizer's order")


# --------------------------------------------- 2. state_from_torch with a dict, no model


def test_state_from_a_live_optimizer_and_a_dict_is_refused_then_fixed():
  run = _trained(model=Proj())
  mid = _weights(run)
  with pytest.raises(ValueError, match=r"param_names=") as refused:
    interop.state_from_torch(run.opt, _nadam(), mid)
  print(f"\nrefused (live optimizer, dict params): {refused.value}")
  state = interop.state_from_torch(run.opt, _nadam(), mid, param_names=list(run.named))
  _continue(run, mid, _nadam(), state, "state_from_torch, live NAdam, param_names=")


def test_state_from_an_optimizer_beside_its_models_state_dict():
  run = _trained()
  mid = _weights(run)
  source = {"model": run.module.state_dict(), "optimizer": run.opt.state_dict()}
  state = interop.state_from_torch(source, _nadam(), mid)
  _continue(run, mid, _nadam(), state, "state_from_torch beside model.state_dict()")


# ---------------------------------------------- 3. a plain dict of tensors as the model


def test_a_sorted_plain_dict_is_not_registration_order(tmp_path):
  run = _trained(model=Proj())
  sd = run.module.state_dict()
  loaded = {k: sd[k].clone() for k in sorted(sd)}  # what safetensors.torch.load_file returns
  torch.save({"model": loaded, "optimizer": run.opt.state_dict()}, tmp_path / "plain.pt")
  for source in ({"model": loaded, "optimizer": run.opt.state_dict()}, tmp_path / "plain.pt"):
    with pytest.raises(ValueError, match=r"param_names=") as refused:
      interop.resume_from_torch(source, run.like())
  print(f"\nrefused (plain sorted dict as the model): {refused.value}")
  params, tx, state = interop.resume_from_torch(tmp_path / "plain.pt", run.like(),
                                                param_names=list(run.named))
  _continue(run, params, tx, state, "plain dict model, param_names=")


def test_a_dict_with_torchs_metadata_is_registration_order(tmp_path):
  run = _trained()
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "ok.pt")
  params, tx, state = interop.resume_from_torch(tmp_path / "ok.pt", run.like())
  _continue(run, params, tx, state, "model.state_dict() (torch's _metadata) + one group")


# ------------------------------------------------------------- 4. DCP names


def _dcp_groups(named):
  """Two groups, neither in the model's order."""
  return [dict(params=[named[n] for n in ("v.weight", "q.weight")]),
          dict(params=[named[n] for n in ("o.weight", "ln.bias", "k.weight", "ln.weight")],
               lr=LR / 2)]


@pytest.mark.parametrize("spec", ["one group reversed", "two groups"])
def test_dcp_get_state_dict_pairs_by_its_fqn_keys(tmp_path, spec):
  import torch.distributed.checkpoint as dcp
  from torch.distributed.checkpoint.state_dict import get_state_dict

  opt_spec = (_dcp_groups if spec == "two groups"
              else lambda named: list(reversed(list(named.values()))))
  run = _trained(opt_spec)
  model_sd, optim_sd = get_state_dict(run.module, run.opt)
  assert isinstance(next(iter(optim_sd["state"])), str)  # keyed by parameter name
  dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp_path / "dcp"))
  params, tx, state = interop.resume_from_torch(tmp_path / "dcp", run.like())
  _continue(run, params, tx, state, f"DCP get_state_dict, {spec}")


# ------------------------------------------------------------- 7. frozen parameters


def _freeze(model, names=("k.weight", "ln.bias")):
  for n, p in model.named_parameters():
    if n in names:
      p.requires_grad_(False)
  return model


def _trainable(named, names=True):
  return [(n, p) if names else p for n, p in named.items() if p.requires_grad]


def test_frozen_parameters_resume_in_one_call(tmp_path):
  run = _trained(_trainable, model=_freeze(Attn()))
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "frozen.pt")
  without = {k: v for k, v in run.like().items() if k != "k"}
  with pytest.raises(ValueError, match=r"k\.weight -> k/weight.*frozen parameters too"):
    interop.resume_from_torch(tmp_path / "frozen.pt", without)  # like must hold them
  params, tx, state = interop.resume_from_torch(tmp_path / "frozen.pt", run.like())
  np.testing.assert_array_equal(params["k"]["weight"], run.named["k.weight"].detach().numpy())
  _continue(run, params, tx, state, "frozen k.weight and ln.bias (not in the optimizer)")


def test_frozen_parameters_without_names_are_refused_naming_them_then_fixed(tmp_path):
  run = _trained(lambda named: _trainable(named, names=False), model=_freeze(Attn()))
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "frozen.pt")
  with pytest.raises(ValueError, match=r"holds 4 parameters and the model 6 .*frozen.*"
                     r"param_names=") as refused:
    interop.resume_from_torch(tmp_path / "frozen.pt", run.like())
  print(f"\nrefused (frozen, no names): {refused.value}")
  names = [n for n, p in run.named.items() if p.requires_grad]
  params, tx, state = interop.resume_from_torch(tmp_path / "frozen.pt", run.like(),
                                                param_names=names)
  _continue(run, params, tx, state, "frozen, param_names=")


def test_state_from_torch_with_frozen_leaves_needs_a_tx_that_leaves_them(tmp_path):
  run = _trained(_trainable, model=_freeze(Attn()))
  source = {"model": run.module.state_dict(), "optimizer": run.opt.state_dict()}
  mid = _weights(run)
  with pytest.raises(ValueError, match=r"\['k'\]\['weight'\].*set_to_zero") as refused:
    interop.state_from_torch(source, _nadam(), mid)
  print(f"\nrefused (state_from_torch, frozen leaves in tx): {refused.value}")
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "frozen" if jax.tree_util.keystr(p) in ("['k']['weight']", "['ln']['bias']")
      else "train", mid)
  tx = optax.multi_transform({"train": _nadam(), "frozen": optax.set_to_zero()}, labels)
  state = interop.state_from_torch(source, tx, mid)
  _continue(run, mid, tx, state, "state_from_torch, frozen via multi_transform")


# ----------------------------------------------------- 8. never-stepped parameters


@pytest.mark.parametrize("named", [True, False])
def test_a_parameter_that_never_had_a_gradient_continues_from_step_0(tmp_path, named):
  run = _trained((lambda n: list(n.items())) if named else None, skip=("o.weight",))
  assert run.named["o.weight"] not in run.opt.state  # torch holds no state for it
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "ck.pt")
  params, tx, state = interop.resume_from_torch(tmp_path / "ck.pt", run.like())
  _continue(run, params, tx, state, "o.weight never stepped, then stepped from 0")


def test_a_parameter_that_skipped_steps_continues_with_its_own_count(tmp_path):
  run = ModuleRun(Attn(), opt_spec=lambda n: list(n.items()))
  for t, g in enumerate(run.grads[:STEPS]):
    run.step([g[n] for n in run.named], skip={0} if t == 2 else set())
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "ck.pt")
  params, tx, state = interop.resume_from_torch(tmp_path / "ck.pt", run.like())
  _continue(run, params, tx, state, "q.weight skipped a step (its own count)")
  with pytest.raises(ValueError, match=r"resume_from_torch|multi_transform"):
    interop.state_from_torch(tmp_path / "ck.pt", _nadam(), params)


# ------------------------------------------------------------------ 9. key=


def test_key_names_the_model_entry_too(tmp_path):
  run = _trained()
  torch.save({"model_state": run.module.state_dict(), "optimizer_state": run.opt.state_dict(),
              "epoch": 3}, tmp_path / "ck.pt")
  with pytest.raises(ValueError, match=r"model_state.*optimizer_state|optimizer_state.*"
                     r"model_state") as refused:
    interop.resume_from_torch(tmp_path / "ck.pt", run.like())
  assert "'optimizer'" in str(refused.value)  # the keys looked for
  print(f"\nrefused (unknown keys): {refused.value}")
  with pytest.raises(ValueError, match=r"key=\(") as refused:
    interop.resume_from_torch(tmp_path / "ck.pt", run.like(), key="optimizer_state")
  print(f"\nrefused (key= names the optimizer only): {refused.value}")
  params, tx, state = interop.resume_from_torch(tmp_path / "ck.pt", run.like(),
                                                key=("model_state", "optimizer_state"))
  _continue(run, params, tx, state, "key=(model entry, optimizer entry)")


# ------------------------------------------------------------------ 13. lr 0


def test_a_schedule_that_reached_lr_0_warns(tmp_path):
  run = ModuleRun(Attn(), opt_spec=lambda n: list(n.items()))
  sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda s: max(0.0, 1 - s / STEPS))
  for g in run.grads[:STEPS]:  # HF's get_linear_schedule_with_warmup at its end
    run.step([g[n] for n in run.named])
    sched.step()
  assert run.opt.param_groups[0]["lr"] == 0.0
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "ck.pt")
  with pytest.warns(UserWarning, match=r"learning rate 0.*state_from_torch"):
    interop.resume_from_torch(tmp_path / "ck.pt", run.like())
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = optax_nadam.nadam(LR, eps=1e-8)  # the fix: a tx of your own
    interop.state_from_torch(tmp_path / "ck.pt", tx, run.like(), check_hyperparams=False)


def test_another_optimizer_is_refused_naming_it():
  run = ModuleRun(Attn())
  opt = torch.optim.AdamW(run.module.parameters(), lr=LR)
  for g in run.grads[:2]:
    for n, p in run.named.items():
      p.grad = torch.from_numpy(g[n])
    opt.step()
  with pytest.raises(ValueError, match=r"not a torch\.optim\.NAdam state.*mu_product"):
    interop.resume_from_torch({"model": run.module.state_dict(),
                               "optimizer": opt.state_dict()}, run.like())


# ----------------------------------------- a Hugging Face folder stays refused without names


def test_hf_safetensors_folder_with_one_group_needs_names(tmp_path):
  run = _trained()
  folder = tmp_path / "checkpoint-5"
  folder.mkdir()
  write_safetensors(folder / "model.safetensors", run.module.state_dict())
  torch.save(run.opt.state_dict(), folder / "optimizer.pt")
  with pytest.raises(ValueError, match=r"param_names="):
    interop.resume_from_torch(folder, run.like())
  params, tx, state = interop.resume_from_torch(folder, run.like(), param_names=list(run.named))
  _continue(run, params, tx, state, "HF folder, one group, param_names=")


def test_lightning_layout_with_frozen_and_named_groups(tmp_path):
  run = _trained(lambda named: [(f"model.{n}", p) for n, p in _trainable(named)],
                 model=_freeze(Attn()))  # self.model = Attn(); named_parameters() of the module
  sd = collections.OrderedDict((f"model.{k}", v) for k, v in run.module.state_dict().items())
  ckpt = {"epoch": 0, "global_step": STEPS, "pytorch-lightning_version": "2.6.0",
          "state_dict": sd, "optimizer_states": [run.opt.state_dict()],
          "lr_schedulers": [], "hyper_parameters": {}}
  torch.save(ckpt, tmp_path / "last.ckpt")
  params, tx, state = interop.resume_from_torch(tmp_path / "last.ckpt", run.like())
  _continue(run, params, tx, state, "Lightning .ckpt, frozen, named optimizer")


def test_ddp_prefix_with_one_group(tmp_path):
  ddp_like = torch.nn.Module()
  ddp_like.module = Attn()  # DDP(model).state_dict(): 'module.' before every name
  run = _trained(model=ddp_like)
  torch.save({"model": ddp_like.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "ddp.pt")
  like = run.like()["module"]
  params, tx, state = interop.resume_from_torch(tmp_path / "ddp.pt", like)
  ours = continue_optax(tx, state, params,
                        [nested({k.split(".", 1)[1]: v for k, v in g.items()})
                         for g in run.grads[STEPS:]])
  assert gap(ours, run.run(run.grads[STEPS:]), "DDP module. prefix, one group") <= TOL
