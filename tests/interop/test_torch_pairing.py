"""The pairing rule as a property: moments land on their own parameters, or the call refuses.

Hypothesis draws models (random names, registered in an order their sorted
names do not follow, repeated shapes), frozen parameters (left out of the
optimizer), parameters that never get a gradient, param groups (any partition,
any order), whether torch wrote ``param_names``, and the file layout: a
`torch.save` checkpoint of ``model.state_dict()``, the same with a plain
sorted dict as the model (what ``safetensors.torch.load_file`` returns), a
Hugging Face folder (sorted safetensors names), or a torch distributed
checkpoint written through ``get_state_dict`` (keyed by names). One group
without names is ``model.parameters()`` minus the frozen ones (the premise of
torch's order). After two real torch NAdam steps:

* `resume_from_torch` either refuses with a message naming ``param_names=``
  (and then, given them, pairs right), or gives every params leaf exactly
  torch's moments for the parameter of that name, never another's; frozen
  leaves get the model's weights and no optimizer state;
* `state_to_torch` into a fresh optimizer built the same way either refuses
  (and then, given ``param_names=``, exports right) or reproduces torch's
  state parameter by parameter.
"""

import collections

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optax_nadam import _tree, interop
from optax_nadam.transform import ScaleByNadamState
from tests.helpers.torch_runs import write_safetensors

SHAPES = [(2,), (3,), (2, 2)]
LAYOUTS = ["torch.save", "plain", "hf", "dcp"]


@st.composite
def runs(draw):
  names = draw(st.lists(st.from_regex(r"[a-z]{1,2}", fullmatch=True), min_size=2, max_size=6,
                        unique=True))
  n = len(names)
  shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=n, max_size=n))
  frozen = draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
  trained = [i for i in range(n) if i not in frozen]
  unstepped = draw(st.sets(st.sampled_from(trained), max_size=len(trained) - 1))
  named = draw(st.booleans())
  order = draw(st.permutations(trained))
  k = len(trained)
  cuts = sorted(draw(st.sets(st.integers(1, k - 1), max_size=2))) if k > 1 else []
  groups = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, k])]
  if len(groups) == 1 and not named:
    groups = [trained]  # the premise: NAdam(p for p in model.parameters() if p.requires_grad)
  return dict(names=[f"p{x}" for x in names], shapes=shapes, frozen=frozen,
              unstepped=unstepped, named=named, groups=groups,
              layout=draw(st.sampled_from(LAYOUTS)))


def _model(case):
  model = torch.nn.Module()
  for name, shape in zip(case["names"], case["shapes"]):
    sub = torch.nn.Module()
    sub.weight = torch.nn.Parameter(torch.randn(shape), requires_grad=True)
    model.add_module(name, sub)
  for i in case["frozen"]:
    getattr(model, case["names"][i]).weight.requires_grad_(False)
  return model


def _optimizer(case, model):
  params = [getattr(model, n).weight for n in case["names"]]
  spec = [dict(params=[(f"{case['names'][i]}.weight", params[i]) if case["named"]
                       else params[i] for i in g]) for g in case["groups"]]
  return torch.optim.NAdam(spec, lr=1e-2)


def _source(case, model, opt, folder):
  layout = case["layout"]
  if layout == "hf":
    write_safetensors(folder / "model.safetensors", model.state_dict())
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    return folder
  if layout == "dcp":
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder / "dcp"))
    return folder / "dcp"
  sd = model.state_dict()
  if layout == "plain":
    sd = {k: sd[k] for k in sorted(sd)}
  torch.save({"model": sd, "optimizer": opt.state_dict()}, folder / "ckpt.pt")
  return folder / "ckpt.pt"


def _param_names(case):
  return [[f"{case['names'][i]}.weight" for i in g] for g in case["groups"]]


def _moments_by_leaf(opt_state, like):
  """``{leaf name: (m, v)}`` over every nadam node of the state (a leaf held once)."""
  out = {}
  for _, node in _tree.find_nodes(opt_state, ScaleByNadamState):
    for top, sub in node.m.items():
      if isinstance(sub, dict) and "weight" in sub and not _masked(sub["weight"]):
        assert top not in out, top
        out[top] = (int(node.count), np.asarray(sub["weight"]),
                    np.asarray(node.v[top]["weight"]))
  return out


def _masked(x):
  return type(x).__name__ == "MaskedNode"


def _check_import(case, model, opt, params, opt_state):
  held = _moments_by_leaf(opt_state, params)
  for i, name in enumerate(case["names"]):
    p = getattr(model, name).weight
    np.testing.assert_array_equal(params[name]["weight"], p.detach().numpy(), err_msg=name)
    if i in case["frozen"]:
      assert name not in held, f"frozen {name} has optimizer state"
      continue
    count, m, v = held[name]
    state = opt.state.get(p)
    if not state:
      assert count == 0 and not m.any() and not v.any(), name
      continue
    assert count == int(state["step"]), name
    np.testing.assert_array_equal(m, state["exp_avg"].numpy(), err_msg=name)
    np.testing.assert_array_equal(v, state["exp_avg_sq"].numpy(), err_msg=name)


def _check_export(case, model, opt, fresh):
  for name in case["names"]:
    p = getattr(model, name).weight
    theirs = opt.state.get(p, {})
    ours = fresh.state.get(p, {})
    assert bool(theirs) == bool(ours), name
    for key in theirs:
      np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy(), err_msg=name)


def _refused(e, case, importing=True):
  message = str(e)
  assert "param_names=" in message, message
  assert not case["named"], message  # names always prove it
  assert not (importing and case["layout"] == "dcp"), message  # so do DCP's FQN keys


def _check(case, folder):
  torch.manual_seed(0)
  model = _model(case)
  opt = _optimizer(case, model)
  rng = np.random.default_rng(0)
  for _ in range(2):
    for i, name in enumerate(case["names"]):
      p = getattr(model, name).weight
      p.grad = (None if i in case["unstepped"] or i in case["frozen"]
                else torch.from_numpy(rng.normal(size=p.shape).astype(np.float32)))
    opt.step()
  source = _source(case, model, opt, folder)
  like = {name: {"weight": np.zeros(s, np.float32)}
          for name, s in zip(case["names"], case["shapes"])}
  try:
    params, _, opt_state = interop.resume_from_torch(source, like)
  except ValueError as e:
    _refused(e, case)
    if len(case["groups"]) == 1 and case["layout"] == "torch.save" and not case["frozen"]:
      raise AssertionError("torch's order proves one group beside model.state_dict()") from e
    params, _, opt_state = interop.resume_from_torch(source, like,
                                                     param_names=_param_names(case))
  _check_import(case, model, opt, params, opt_state)
  fresh = _optimizer(case, model)
  try:
    interop.state_to_torch(opt_state, params, fresh)
  except ValueError as e:
    _refused(e, case, importing=False)
    interop.state_to_torch(opt_state, params, fresh, param_names=_param_names(case))
  _check_export(case, model, opt, fresh)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=runs())
def test_moments_land_on_their_parameters_or_the_call_refuses(tmp_path_factory, case):
  _check(case, tmp_path_factory.mktemp("run"))


@pytest.mark.slow
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=runs())
def test_moments_land_on_their_parameters_many_models(tmp_path_factory, case):
  _check(case, tmp_path_factory.mktemp("run"))


def test_the_property_covers_each_layout_and_rule():
  """The strategy reaches every layout, frozen and never-stepped parameters, names or not."""
  seen = collections.Counter()

  @settings(max_examples=300, deadline=None, database=None)
  @given(case=runs())
  def draw(case):
    seen[case["layout"]] += 1
    seen["frozen"] += bool(case["frozen"])
    seen["unstepped"] += bool(case["unstepped"])
    seen["named"] += case["named"]
    seen["groups>1"] += len(case["groups"]) > 1

  draw()
  assert all(seen[k] > 10 for k in [*LAYOUTS, "frozen", "unstepped", "named", "groups>1"]), seen
