"""interop.layout: torch weights and moments in Flax's layout and names.

The worked example (docs/migration.md) is here too: a torch MLP trained a few
NAdam steps and saved with `torch.save`, continued as a Flax NNX model with
`nnx.Optimizer`, within 1e-5 of torch continuing the same run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import optax_nadam
from optax_nadam import interop
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, TOL, ModuleRun, saved


def test_torch_linear_to_flax_transposes_matrices_only():
  w, b = np.arange(6.0).reshape(2, 3), np.arange(2.0)
  np.testing.assert_array_equal(interop.torch_linear_to_flax("[0]", w), w.T)
  assert interop.torch_linear_to_flax("[1]", b) is b


def test_an_x_at_w_model_resumes_with_torch_linear_to_flax(tmp_path):
  path, run, mid, grads = saved(tmp_path)
  flax_mid = [p.T if p.ndim == 2 else p for p in mid]  # x @ w layout
  tx = optax_nadam.nadam(LR, eps=1e-8)
  state = interop.state_from_torch(path, tx, flax_mid, layout=interop.torch_linear_to_flax)
  np.testing.assert_array_equal(state[0].m[0], run.opt.state[run.ps[0]]["exp_avg"].numpy().T)
  ours = continue_optax(tx, state, flax_mid, [[g.T if g.ndim == 2 else g for g in gs]
                                              for gs in grads])
  theirs = run.run(grads)
  assert gap([[p.T if p.ndim == 2 else p for p in ps] for ps in ours], theirs) <= TOL
  with pytest.raises(ValueError, match=r"torch parameter 0 .*m has shape \(6, 4\); the param "
                     r"has \(4, 6\)"):
    interop.state_from_torch(path, tx, flax_mid)  # no layout: the error names the shapes


def test_torch_to_flax_names():
  name = interop.torch_to_flax.leaf_name
  assert name("fc1.weight", (3, 4)) == "fc1/kernel"
  assert name("layers.0.bias", (3,)) == "layers/0/bias"
  assert name("norm.weight", (3,)) == "norm/scale"
  assert name("bn.running_mean", (3,)) is None
  assert name("bn.num_batches_tracked", ()) is None
  emb = interop.TorchToFlax(rename={"emb.weight": "emb/embedding"})
  assert emb.leaf_name("emb.weight", (10, 4)) == "emb/embedding"
  table = np.ones((10, 4))
  assert emb("['emb']['embedding']", table) is table  # only kernels change layout


def test_torch_to_flax_gives_flax_conv_and_norm_layers_torchs_function():
  torch.manual_seed(0)
  net = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(3, 5, (3, 2)), "bn": torch.nn.BatchNorm2d(5),
                             "fc": torch.nn.Linear(5, 2)})
  net["bn"].weight.data.uniform_(0.5, 1.5)

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 5, (3, 2), padding="VALID", rngs=rngs)
      self.bn = nnx.BatchNorm(5, use_running_average=True, rngs=rngs)
      self.fc = nnx.Linear(5, 2, rngs=rngs)

  flax_net = Net(nnx.Rngs(0))
  params = interop.params_from_torch(net, nnx.state(flax_net, nnx.Param),
                                     layout=interop.torch_to_flax)
  nnx.update(flax_net, params)
  x = np.random.default_rng(0).normal(size=(2, 3, 6, 5)).astype(np.float32)
  net.eval()
  want = net["fc"](net["bn"](net["conv"](torch.tensor(x))).mean((2, 3))).detach().numpy()
  h = flax_net.bn(flax_net.conv(jnp.asarray(x.transpose(0, 2, 3, 1))))
  got = flax_net.fc(h.mean((1, 2)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_name_matching_errors_name_the_entries():
  sd = {"fc1.weight": torch.ones(2, 3), "fc1.bias": torch.ones(2), "head.weight": torch.ones(1, 2)}
  like = {"fc1": {"kernel": np.zeros((3, 2)), "bias": np.zeros(2)}, "fc2": {"kernel": np.zeros(
      (2, 1))}}
  with pytest.raises(ValueError, match=r"entries \['head\.weight -> head/kernel'\] name no "
                     r"params leaf .*rename="):
    interop.params_from_torch(sd, like, layout=interop.torch_to_flax)
  sd.pop("head.weight")
  with pytest.raises(ValueError, match=r"params leaves \[\"\['fc2'\]\['kernel'\]\"\] are filled "
                     "by no entry"):
    interop.params_from_torch(sd, like, layout=interop.torch_to_flax)


class _TorchMLP(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(4, 16)
    self.fc2 = torch.nn.Linear(16, 3)

  def forward(self, x):
    return self.fc2(torch.tanh(self.fc1(x)))


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(4, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jnp.tanh(self.fc1(x)))


def test_worked_example_torch_mlp_checkpoint_continued_with_nnx_optimizer(tmp_path):
  torch.manual_seed(0)
  x, y = torch.randn(32, 4), torch.randn(32, 3)
  model = _TorchMLP()
  opt = torch.optim.NAdam(model.parameters(), lr=1e-2)

  def torch_step():
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()

  for _ in range(5):
    torch_step()
  path = tmp_path / "ckpt.pt"
  torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)

  net = _MLP(nnx.Rngs(0))
  params, tx, opt_state = interop.resume_from_torch(path, nnx.state(net, nnx.Param),
                                                    layout=interop.torch_to_flax)
  nnx.update(net, params)
  optimizer = interop.nnx_optimizer(net, tx, opt_state)
  assert int(optimizer.step[...]) == 5

  @nnx.jit
  def train_step(net, optimizer, x, y):
    grads = nnx.grad(lambda net: ((net(x) - y) ** 2).mean())(net)
    optimizer.update(net, grads)

  xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
  like = nnx.as_pure(nnx.state(net, nnx.Param))
  ours, theirs = [], []
  for _ in range(20):
    torch_step()
    train_step(net, optimizer, xj, yj)
    theirs.append(jax.tree.leaves(interop.params_from_torch(model, like,
                                                            layout=interop.torch_to_flax)))
    ours.append(jax.tree.leaves(nnx.as_pure(nnx.state(net, nnx.Param))))
  assert gap(ours, theirs, "NNX continuation of a torch MLP checkpoint (nnx_optimizer)") <= TOL
  with pytest.raises(ValueError, match="does not have the structure of tx.init"):
    interop.nnx_optimizer(net, tx, opt_state[0])


class _TorchBN(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc = torch.nn.Linear(3, 4)
    self.bn = torch.nn.BatchNorm1d(4)
    self.out = torch.nn.Linear(4, 2)


def _bn_run(tmp_path):
  """A torch net with BatchNorm: running statistics from 3 forward passes, 5 NAdam steps."""
  torch.manual_seed(0)
  net = _TorchBN()
  for _ in range(3):
    net.bn(net.fc(torch.randn(16, 3) + 2.0))  # train mode: the running statistics move
  run = ModuleRun(net, weight_decay=0.01)
  run.run(run.grads[:5])
  torch.save({"model": net.state_dict(), "optimizer": run.opt.state_dict()}, tmp_path / "bn.pt")
  return run


def _flax_name(name):
  scope, last = name.split(".")
  return scope, {"weight": "kernel" if scope != "bn" else "scale", "bias": "bias"}[last]


def _as_flax(values):
  """{torch name: array} -> Flax params (kernels transposed)."""
  out = {}
  for n, v in values.items():
    scope, leaf = _flax_name(n)
    out.setdefault(scope, {})[leaf] = v.T if leaf == "kernel" else v
  return out


def test_batchnorm_statistics_into_linen_batch_stats(tmp_path):
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.BatchNorm(use_running_average=True, name="bn")(nn.Dense(4, name="fc")(x))
      return nn.Dense(2, name="out")(h)

  variables = Net().init(jax.random.key(0), jnp.ones((2, 3)))
  run = _bn_run(tmp_path)
  net, grads = run.module, run.grads[5:]
  params, tx, opt_state = interop.resume_from_torch(tmp_path / "bn.pt", variables,
                                                    layout=interop.torch_to_flax)
  np.testing.assert_array_equal(params["batch_stats"]["bn"]["mean"], net.bn.running_mean.numpy())
  np.testing.assert_array_equal(params["batch_stats"]["bn"]["var"], net.bn.running_var.numpy())
  assert float(np.min(net.bn.running_var.numpy())) != 1.0  # the statistics did move
  ours = continue_optax(tx, opt_state, params["params"], [_as_flax(g) for g in grads])
  theirs = [jax.tree.leaves(_as_flax(h)) for h in run.run(grads, by_name=True)]
  assert gap(ours, theirs, "Linen variables with batch_stats (BatchNorm statistics)") <= TOL


def test_batchnorm_statistics_into_nnx_batchstat(tmp_path):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(3, 4, rngs=rngs)
      self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
      self.drop = nnx.Dropout(0.1, rngs=rngs)
      self.out = nnx.Linear(4, 2, rngs=rngs)

  model = Net(nnx.Rngs(0))
  run = _bn_run(tmp_path)
  net, grads = run.module, run.grads[5:]
  like = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))  # not Dropout's RNG state
  params, tx, opt_state = interop.resume_from_torch(tmp_path / "bn.pt", like,
                                                    layout=interop.torch_to_flax)
  nnx.update(model, params)
  np.testing.assert_array_equal(model.bn.mean[...], net.bn.running_mean.numpy())
  np.testing.assert_array_equal(model.bn.var[...], net.bn.running_var.numpy())
  optimizer = interop.nnx_optimizer(model, tx, opt_state)

  @nnx.jit
  def step(model, optimizer, g):
    # d/dparams of sum(params * g) is g: the optimizer sees exactly torch's gradients.
    grads = nnx.grad(lambda m: sum(jnp.sum(a * b) for a, b in zip(
        jax.tree.leaves(nnx.as_pure(nnx.state(m, nnx.Param))), jax.tree.leaves(g))))(model)
    optimizer.update(model, grads)

  ours = []
  for g in grads:
    step(model, optimizer, _as_flax(g))
    ours.append(jax.tree.leaves(nnx.as_pure(nnx.state(model, nnx.Param))))
  theirs = [jax.tree.leaves(_as_flax(h)) for h in run.run(grads, by_name=True)]
  assert gap(ours, theirs, "NNX state with BatchStat (BatchNorm statistics), nnx_optimizer") <= TOL


def test_matching_by_name_needs_the_models_names(tmp_path):
  path, run, mid, _ = saved(tmp_path)  # the optimizer state dict alone: no names
  with pytest.raises(ValueError, match=r"matches by name, but torch checkpoint .*ckpt\.pt' comes "
                     "without the model's state dict"):
    interop.state_from_torch(path, optax_nadam.nadam(LR, eps=1e-8), mid,
                             layout=interop.torch_to_flax)
