"""The benchmark's regimes and contestants: one optimizer step each, ready to time.

Each builder returns ``run(n)``, which takes n steps and returns once they are
done (jax: blocked on the results). See `benchmarks/run.py` for how they are
timed and reported.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_nadam

LR = 1e-3


def _transformer_like():
  """~20M params: an embedding, 5 blocks of d=512 (4 matrices, 8 small vectors each)."""
  d, ff, vocab = 512, 2048, 8192
  shapes = [(vocab, d)]
  for _ in range(5):
    shapes += [(d, 3 * d), (3 * d,), (d, d), (d,), (d, ff), (ff,), (ff, d), (d,),
               (d,), (d,), (d,), (d,)]  # qkv, out, mlp in/out with biases; 2 LayerNorms
  return shapes + [(d,), (d,)]


REGIMES = {
    "a": ("(a) 10 x 1M", [(1_000_000,)] * 10, jnp.float32),
    "a16": ("(a) 10 x 1M bf16", [(1_000_000,)] * 10, jnp.bfloat16),
    "b": ("(b) 1000 x 10k", [(10_000,)] * 1000, jnp.float32),
    "c": ("(c) 2000 x 100", [(100,)] * 2000, jnp.float32),
    "d": ("(d) transformer-like", _transformer_like(), jnp.float32),
}

JAX_TXS = {
    "optax_nadam.nadam": lambda: optax_nadam.nadam(LR),
    "optax_nadam.grouped(nadam)": lambda: optax_nadam.grouped(optax_nadam.nadam(LR)),
    "optax.adam": lambda: optax.adam(LR),
    "optax.nadam": lambda: optax.nadam(LR),
}
CONTESTANTS = list(JAX_TXS) + [
    "keras 3 Nadam (jit)", "torch NAdam foreach", "torch NAdam single", "torch Adam fused",
    "streaming bound"]


def problem(shapes, dtype):
  """Params and grads (numpy, seed 0) of the given shapes in `dtype`."""
  rng = np.random.default_rng(0)
  params = [rng.standard_normal(s, np.float32) for s in shapes]
  grads = [0.01 * rng.standard_normal(s, np.float32) for s in shapes]
  if dtype != jnp.float32:
    params = [np.asarray(jnp.asarray(p, dtype)) for p in params]
    grads = [np.asarray(jnp.asarray(g, dtype)) for g in grads]
  return params, grads


def step_fn(tx):
  """The timed step of a jax contestant: ``(params, state, grads) -> (params, state)``."""

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return step


def _jax_step(make_tx, params, grads):
  tx = make_tx()
  p = [jnp.array(x) for x in params]
  g = [jnp.array(x) for x in grads]
  s = tx.init(p)
  fn = jax.jit(step_fn(tx), donate_argnums=(0, 1))
  box = [p, s]

  def run(n):
    for _ in range(n):
      box[0], box[1] = fn(box[0], box[1], g)
    jax.block_until_ready(box)

  return run


def _keras_step(params, grads):
  import keras

  vs = [keras.Variable(x) for x in params]
  opt = keras.optimizers.Nadam(learning_rate=LR)
  opt.build(vs)
  fn = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
  g = [jnp.array(x) for x in grads]
  box = [[jnp.array(v.value) for v in opt.variables], [jnp.array(v.value) for v in vs]]
  del vs, opt

  def run(n):
    for _ in range(n):
      box[1], box[0] = fn(box[0], g, box[1])
    jax.block_until_ready(box)

  return run


def _torch_step(kind, params, grads, dtype):
  import torch

  torch.set_num_threads(os.cpu_count())
  tdtype = torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32
  ps = [torch.tensor(np.asarray(x, np.float32)).to(tdtype).requires_grad_() for x in params]
  for p, g in zip(ps, grads):
    p.grad = torch.tensor(np.asarray(g, np.float32)).to(tdtype)
  if kind == "torch NAdam foreach":
    opt = torch.optim.NAdam(ps, lr=LR, foreach=True)
  elif kind == "torch NAdam single":
    opt = torch.optim.NAdam(ps, lr=LR, foreach=False)
  else:
    opt = torch.optim.Adam(ps, lr=LR, fused=True)

  def run(n):
    for _ in range(n):
      opt.step()

  return run


def _streaming_step(params, dtype):
  size = sum(int(np.prod(p.shape)) for p in params)
  fn = jax.jit(lambda x: -x, donate_argnums=0)
  box = [jnp.ones((size,), dtype)]

  def run(n):
    for _ in range(n):
      box[0] = fn(box[0])
    jax.block_until_ready(box)

  return run


def make(name, params, grads, dtype):
  """``run(n)`` for contestant `name` (a name in `CONTESTANTS`) on these params and grads."""
  if name in JAX_TXS:
    return _jax_step(JAX_TXS[name], params, grads)
  if name.startswith("keras"):
    return _keras_step(params, grads)
  if name.startswith("torch"):
    return _torch_step(name, params, grads, dtype)
  return _streaming_step(params, dtype)
