"""Ground truth and peer runners shared by the core's tests.

`reference_nadam` is the seed's formulas in float64 numpy, written from the
math in the README, independent of the package. The `run_*` functions feed one
fixed gradient sequence to a real peer optimizer (installed from the `test`
extra) and return its parameters after each step.
"""

import numpy as np

SHAPES = {
    "matrix": [(7, 5)],
    "mixed": [(7, 5), (11,), (2, 3, 4), ()],
}


def make_problem(shapes, steps, seed=0, grad_scales=True):
  """Float32 initial params and a fixed gradient sequence for `shapes`."""
  rng = np.random.default_rng(seed)
  params = [rng.normal(size=s).astype(np.float32) for s in shapes]
  scales = [10.0 ** rng.uniform(-3, 1) if grad_scales else 1.0 for _ in shapes]
  grads = [
      [(rng.normal(size=s) * c).astype(np.float32) for s, c in zip(shapes, scales)]
      for _ in range(steps)
  ]
  return params, grads


def peers_md_problem(steps=200, seed=0):
  """The precision problem of shared/PEERS.md: mixed shapes, per-draw scales.

  Seed 0 is the PEERS.md problem; other seeds draw more problems of the same
  kind. The draw order (all params, then per step per leaf a normal then a
  scale) is part of the problem's definition, so the first k steps of a longer
  problem are the k-step problem.

  Args:
    steps: number of gradient steps to draw.
    seed: seed of ``np.random.default_rng``.

  Returns:
    ``(params, grads)``: float32 leaves of shapes (5, 7), (11,), (2, 3, 4), ()
    and ``steps`` lists of float32 gradients of those shapes.
  """
  rng = np.random.default_rng(seed)
  shapes = [(5, 7), (11,), (2, 3, 4), ()]
  params = [rng.normal(size=s).astype(np.float32) for s in shapes]
  grads = [
      [rng.normal(size=s).astype(np.float32) * (10 ** rng.uniform(-3, 1))
       for s in shapes]
      for _ in range(steps)
  ]
  return params, grads


def _to64(x):
  """float64, or complex128 for complex input."""
  x = np.asarray(x)
  return x.astype(np.promote_types(x.dtype, np.float64))


def reference_nadam(
    params,
    grads,
    lr=1e-3,
    b1=0.9,
    b2=0.999,
    eps=1e-7,
    momentum_decay=0.004,
    eps_root=0.0,
    weight_decay=0.0,
    decoupled=False,
    param_dtype=None,
):
  """The seed's NAdam in float64; returns the params after every step.

  With ``param_dtype`` (e.g. ``np.float32``) the params are rounded to it after
  every step and everything else stays float64: the error that the storage of
  the params alone causes, the floor of any implementation that keeps them in
  that dtype.
  """
  p = [_to64(x) for x in params]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros(np.shape(x), np.float64) for x in p]
  prod = 1.0
  history = []
  for t, gs in enumerate(grads, start=1):
    mu_t = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * t))
    mu_next = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * (t + 1)))
    prod *= mu_t
    for i, g in enumerate(gs):
      g = _to64(g)
      if weight_decay and not decoupled:
        g = g + weight_decay * p[i]
      if weight_decay and decoupled:
        p[i] = p[i] * (1 - lr * weight_decay)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * np.abs(g) ** 2
      m_bar = (1 - mu_t) * g / (1 - prod) + mu_next * m[i] / (1 - prod * mu_next)
      p[i] = p[i] - lr * m_bar / (np.sqrt(v[i] / (1 - b2**t) + eps_root) + eps)
      if param_dtype is not None:
        p[i] = _to64(np.asarray(p[i]).astype(param_dtype))
    history.append([x.copy() for x in p])
  return history


def run_torch(params, grads, lr, b1, b2, eps, momentum_decay, weight_decay=0.0,
              decoupled=False, clip_norm=None):
  """torch.optim.NAdam on the gradient sequence; params after every step."""
  from tests.helpers.torch_runs import TorchRun

  return TorchRun(params, lr=lr, betas=(b1, b2), eps=eps, momentum_decay=momentum_decay,
                  weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                  clip=clip_norm).run(grads)


def run_tf_legacy(params, grads, lr, b1, b2, eps, momentum_decay):
  """tf_keras.optimizers.legacy.Nadam (the seed's class); params after every step."""
  return tf_legacy_run(params, grads, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps,
                       schedule_decay=momentum_decay)[0]


def tf_legacy_run(params, grads, **kwargs):
  """tf_keras.optimizers.legacy.Nadam(**kwargs), a tf.function step.

  Returns ``(params after every step, the optimizer)``.
  """
  import tensorflow as tf
  import tf_keras

  vs = [tf.Variable(x) for x in params]
  opt = tf_keras.optimizers.legacy.Nadam(**kwargs)

  @tf.function
  def step(gs):
    opt.apply_gradients(zip(gs, vs))

  history = []
  for gs in grads:
    step([tf.constant(g) for g in gs])
    history.append([v.numpy().copy() for v in vs])
  return history, opt


def run_keras3(params, grads, lr, b1, b2, eps):
  """keras.optimizers.Nadam (Keras 3, jax backend); params after every step."""
  return keras3_run(params, grads, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)[0]


def keras3_run(params, grads, names=None, exclude=None, **kwargs):
  """keras.optimizers.Nadam(**kwargs) (jax backend); None gradients allowed.

  Variables are named `names` (what `exclude`, Keras 3's
  ``exclude_from_weight_decay(var_names=...)``, matches). Steps go through
  Keras's own `stateless_apply` under `jax.jit` (eager Keras 3 traces its
  `lax.cond`s on every step); the final values are assigned back so the
  optimizer can be inspected. Returns ``(params after every step, the optimizer)``.
  """
  import jax
  import keras

  names = names or [None] * len(params)
  vs = [keras.Variable(x, name=n) for n, x in zip(names, params)]
  opt = keras.optimizers.Nadam(**kwargs)
  if exclude:
    opt.exclude_from_weight_decay(var_names=exclude)
  opt.build(vs)
  step = jax.jit(opt.stateless_apply)
  opt_values = [v.value for v in opt.variables]
  values = [v.value for v in vs]
  history = []
  for gs in grads:
    gs = [None if g is None else jax.numpy.asarray(g) for g in gs]
    values, opt_values = step(opt_values, gs, values)
    history.append([np.asarray(x) for x in values])
  for var, value in zip(list(vs) + list(opt.variables), list(values) + list(opt_values)):
    var.assign(value)
  return history, opt


def max_rel_gap(history_a, history_b, scale_of):
  """Max over steps and leaves of |a - b| / (scale of the param leaf)."""
  gap = 0.0
  for step_a, step_b in zip(history_a, history_b, strict=True):
    for i, (a, b) in enumerate(zip(step_a, step_b, strict=True)):
      diff = np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                    initial=0.0)
      gap = max(gap, diff / scale_of[i])
  return gap


def gap(ours, theirs, label=None):
  """The gap metric of the parity tests: `max_rel_gap` with the peer's `param_scale`.

  With a `label`, prints it (``pytest -s`` shows every measured gap).
  """
  measured = max_rel_gap(ours, theirs, param_scale(theirs))
  if label is not None:
    print(f"\ngap, {label}: {measured:.2e} (max over {len(theirs)} steps, relative to each "
          "param's scale)")
  return measured


def max_abs_error(history, reference):
  """Max over steps and leaves of |x - ref| (in float64, or complex128 for complex)."""
  return max(
      float(np.max(np.abs(_to64(a) - b), initial=0.0))
      for step_a, step_r in zip(history, reference, strict=True)
      for a, b in zip(step_a, step_r, strict=True)
  )


def continue_optax(tx, state, params, grads, with_state=False):
  """Our optimizer `tx` (jitted step) from `state` on the gradient sequence.

  `params` and each step's gradients are trees of one structure. Returns the
  params' leaves after every step (and the final state `with_state`).
  """
  import jax
  import optax

  @jax.jit
  def step(ps, state, gs):
    updates, state = tx.update(gs, state, ps)
    return optax.apply_updates(ps, updates), state

  ps = jax.tree.map(jax.numpy.asarray, params)
  history = []
  for gs in grads:
    ps, state = step(ps, state, jax.tree.map(jax.numpy.asarray, gs))
    history.append([np.asarray(x) for x in jax.tree.leaves(ps)])
  return (history, state) if with_state else history


def continue_on_loss(tx, params, state, loss, *batch, steps):
  """`steps` jitted steps of `tx` on ``jax.grad(loss)(params, *batch)`` from `state`.

  Returns ``(the params' leaves as numpy arrays, the final state)``.
  """
  import jax
  import optax

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params, *batch), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return [np.asarray(p) for p in jax.tree.leaves(params)], state


def run_ours(tx, params, grads, with_state=False):
  """Our optimizer `tx` from ``tx.init`` on the gradient sequence (see `continue_optax`)."""
  import jax

  return continue_optax(tx, tx.init([jax.numpy.asarray(x) for x in params]), params, grads,
                        with_state=with_state)


def param_scale(history):
  """Per leaf, the largest |param| seen along a trajectory (at least 1e-3)."""
  return [
      max(1e-3, max(float(np.max(np.abs(step[i]), initial=0.0)) for step in history))
      for i in range(len(history[0]))
  ]
