"""The one torch.optim.NAdam runner of the tests, and torch runs saved to files.

`TorchRun` steps a real torch NAdam on given gradients (param groups, gradient
clipping, an lr scheduler, skipped parameters); `saved` writes one after a few
steps the way `torch.save` checkpoints do. Continuing in optax and the gap
metric are `tests.helpers.reference.continue_optax` and `gap`.
"""

import json
import pathlib
import struct

import jax
import numpy as np

SHAPES = [(6, 4), (6,), (3, 6), (3,)]
LR = 1e-2
TOL = 1e-5
MORE = 20  # steps continued after the import


def problem(steps, seed=0, dtype=np.float32, shapes=SHAPES, scale=0.1):
  """Initial params and a fixed gradient sequence (gradients ~`scale`)."""
  rng = np.random.default_rng(seed)
  params = [rng.normal(size=s).astype(dtype) for s in shapes]
  grads = [[(scale * rng.normal(size=s)).astype(dtype) for s in shapes] for _ in range(steps)]
  return params, grads


class TorchRun:
  """torch.optim.NAdam on tensors built from `params`, stepping on given gradients.

  Args:
    params: the initial values (numpy; their dtype is kept).
    groups: ``[(indices, extra kwargs), ...]`` for several param groups.
    clip: ``clip_grad_norm_`` threshold applied before each step.
    schedule: a ``LambdaLR`` factor function of the step.
    named: optional names; with them the optimizer is built from (name,
      param) pairs, so torch writes ``param_names`` into its groups.
    **kwargs: NAdam's hyperparameters (lr defaults to `LR`).
  """

  def __init__(self, params, groups=None, clip=None, schedule=None, named=None, **kwargs):
    import torch

    self.torch = torch
    self.ps = [torch.tensor(np.array(x), requires_grad=True) for x in params]
    item = (lambda i: (named[i], self.ps[i])) if named else (lambda i: self.ps[i])
    if groups is None:
      spec = [item(i) for i in range(len(self.ps))]
    else:
      spec = [dict(params=[item(i) for i in idx], **extra) for idx, extra in groups]
    self.opt = torch.optim.NAdam(spec, **{"lr": LR, **kwargs})
    self.clip = clip
    self.sched = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(
        self.opt, schedule)

  def step(self, grads, skip=()):
    for i, (p, g) in enumerate(zip(self.ps, grads)):
      p.grad = None if i in skip else self.torch.tensor(np.array(g))
    if self.clip is not None:
      self.torch.nn.utils.clip_grad_norm_(self.ps, self.clip)
    self.opt.step()
    if self.sched is not None:
      self.sched.step()

  def run(self, grads):
    history = []
    for gs in grads:
      self.step(gs)
      history.append(self.params())
    return history

  def params(self):
    return [p.detach().numpy().copy() for p in self.ps]


def nested(flat):
  """``{"a.b.c": x}`` -> ``{"a": {"b": {"c": x}}}`` (a params tree keyed by torch's names)."""
  out = {}
  for name, x in flat.items():
    *scope, last = name.split(".")
    node = out
    for k in scope:
      node = node.setdefault(k, {})
    node[last] = x
  return out


class ModuleRun(TorchRun):
  """`TorchRun` over a torch module's parameters, with fixed gradients by parameter name.

  Args:
    module: the ``nn.Module``.
    opt_spec: ``named_parameters dict -> NAdam's params argument`` (groups,
      ``(name, param)`` pairs); default ``module.parameters()``.
    steps: how many gradient steps to draw (``self.grads``, dicts by name).
    seed: seed of the gradients (~0.1).
    **kwargs: NAdam's hyperparameters.
  """

  def __init__(self, module, opt_spec=None, steps=25, seed=0, **kwargs):
    import torch

    self.torch = torch
    self.module = module
    self.named = dict(module.named_parameters())
    self.ps = list(self.named.values())
    spec = opt_spec(self.named) if opt_spec else self.ps
    self.opt = torch.optim.NAdam(spec, **{"lr": LR, **kwargs})
    self.clip = self.sched = None
    rng = np.random.default_rng(seed)
    self.grads = [{n: (0.1 * rng.normal(size=p.shape)).astype(np.float32)
                   for n, p in self.named.items()} for _ in range(steps)]

  def run(self, grads, by_name=False):
    """Steps on gradient dicts (by name); the parameters after each step (`values`, or dicts)."""
    history = []
    for gs in grads:
      self.step([gs[n] for n in self.named])
      history.append({n: p.detach().numpy().copy() for n, p in self.named.items()} if by_name
                     else self.values())
    return history

  def values(self):
    """The parameters as numpy, in the leaf order of ``nested`` by name."""
    return jax.tree.leaves(nested({n: p.detach().numpy().copy() for n, p in self.named.items()}))

  def like(self):
    return nested({n: np.zeros(tuple(p.shape), np.float32) for n, p in self.named.items()})


def saved(tmp_path, steps=5, name="ckpt.pt", checkpoint=None, grad_scale=0.1, **kwargs):
  """A torch run saved after `steps` steps: (path, run, mid params, remaining grads)."""
  import torch

  params, grads = problem(steps + MORE, scale=grad_scale)
  run = TorchRun(params, **kwargs)
  run.run(grads[:steps])
  path = tmp_path / name
  sd = run.opt.state_dict()
  torch.save(sd if checkpoint is None else checkpoint(run, sd), path)
  return path, run, run.params(), grads[steps:]


def write_safetensors(path, tensors):
  """A safetensors file as the format specifies it: names sorted, data in that order."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name].detach().numpy(), "<f4")
    header[name] = {"dtype": "F32", "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    chunks.append(a.tobytes())
    offset += a.nbytes
  header["__metadata__"] = {"format": "pt"}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  pathlib.Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))
