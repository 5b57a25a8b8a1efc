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
from tests.helpers.torch_runs import LR, TOL, saved


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
  nnx.update(net, interop.params_from_torch(path, nnx.state(net, nnx.Param),
                                            layout=interop.torch_to_flax))
  tx = optax_nadam.nadam(1e-2, eps=1e-8)
  optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)
  params = nnx.as_pure(nnx.state(net, nnx.Param))
  state = interop.state_from_torch(path, tx, params, layout=interop.torch_to_flax)
  nnx.update(optimizer.opt_state, nnx.state(state))

  @nnx.jit
  def train_step(net, optimizer, x, y):
    grads = nnx.grad(lambda net: ((net(x) - y) ** 2).mean())(net)
    optimizer.update(net, grads)

  xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
  diff = scale = 0.0
  for _ in range(20):
    torch_step()
    train_step(net, optimizer, xj, yj)
    theirs = interop.params_from_torch(model, params, layout=interop.torch_to_flax)
    ours = nnx.as_pure(nnx.state(net, nnx.Param))
    diff = max([diff] + [float(jnp.max(jnp.abs(a - b))) for a, b in
                         zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))])
    scale = max([scale] + [float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(theirs)])
  print(f"\nNNX continuation of a torch MLP checkpoint: gap {diff / scale:.2e} after 20 steps")
  assert diff / scale <= TOL


def test_matching_by_name_needs_the_models_names(tmp_path):
  path, run, mid, _ = saved(tmp_path)  # the optimizer state dict alone: no names
  with pytest.raises(ValueError, match=r"matches by name, but torch checkpoint .*ckpt\.pt' comes "
                     "without the model's state dict"):
    interop.state_from_torch(path, optax_nadam.nadam(LR, eps=1e-8), mid,
                             layout=interop.torch_to_flax)
