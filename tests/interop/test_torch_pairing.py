"""The pairing rule as a property: moments land on their own parameters, or the import refuses.

Hypothesis draws models (parameters of repeated shapes, registered in an order
their sorted names do not follow), param groups (any partition, any order),
whether torch wrote ``param_names``, and the file layout (a `torch.save`
checkpoint, or a Hugging Face folder with sorted safetensors names); one group
without names is ``model.parameters()`` (the premise of torch's order). After two
real torch NAdam steps, `resume_from_torch` must either refuse with the
pairing message or give every params leaf exactly torch's moments for the
parameter of that name: never another parameter's.
"""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optax_nadam import interop
from optax_nadam.interop._nodes import read_state
from tests.helpers.torch_runs import ModuleRun, write_safetensors

SHAPES = [(2,), (3,), (2, 2)]


@st.composite
def runs(draw):
  shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=2, max_size=6))
  n = len(shapes)
  order = draw(st.permutations(range(n)))
  cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=2))) if n > 1 else []
  groups = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
  named = draw(st.booleans())
  if len(groups) == 1 and not named:
    # The order rule's premise: one group without names is NAdam(model.parameters()),
    # torch's registration order (a permuted list there is not detectable; docs say so).
    groups = [list(range(n))]
  return shapes, groups, named, draw(st.sampled_from(["torch.save", "hf"]))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=runs())
def test_moments_land_on_their_parameters_or_the_import_refuses(tmp_path_factory, case):
  shapes, groups, named, layout = case
  n = len(shapes)
  names = [f"{chr(ord('a') + n - 1 - i)}.weight" for i in range(n)]  # registered f, e, d, ...
  model = torch.nn.Module()
  for name, shape in zip(names, shapes):
    sub = torch.nn.Module()
    sub.weight = torch.nn.Parameter(torch.randn(shape))
    model.add_module(name.split(".")[0], sub)
  run = ModuleRun(model, steps=2, opt_spec=lambda p: [
      dict(params=[(names[i], p[names[i]]) if named else p[names[i]] for i in g])
      for g in groups])
  run.run(run.grads)
  opt, params = run.opt, run.named
  folder = tmp_path_factory.mktemp("run")
  if layout == "hf":
    write_safetensors(folder / "model.safetensors", model.state_dict())
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    source = folder
  else:
    source = folder / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, source)
  like = {name.split(".")[0]: {"weight": np.zeros(s, np.float32)}
          for name, s in zip(names, shapes)}
  try:
    out, tx, opt_state = interop.resume_from_torch(source, like)
  except ValueError as e:
    assert "cannot be proven" in str(e) and "param_names=" in str(e), str(e)
    assert not named  # names always prove the pairing
    assert not (len(groups) == 1 and layout == "torch.save")  # nor does torch's order
    return
  leaf_names = [f"{k}.weight" for k in sorted(like)]
  for name, (_, _, m, v) in zip(leaf_names, read_state(opt_state, out), strict=True):
    state = opt.state[params[name]]
    np.testing.assert_array_equal(m, state["exp_avg"].numpy(), err_msg=name)
    np.testing.assert_array_equal(v, state["exp_avg_sq"].numpy(), err_msg=name)

