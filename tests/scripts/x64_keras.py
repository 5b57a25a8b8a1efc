"""The Keras front under ``jax_enable_x64``, in a fresh interpreter.

``jax_enable_x64`` is process-global, so `tests/keras/test_x64.py` runs this file
with `tests/helpers/subproc.py` and asserts on the ``RESULT {json}`` line it
prints: the largest |params - float64 formulas| of `optax_nadam.keras.Nadam`
on float64 and complex128 params with gradient accumulation, and on float64
params with each Keras schedule config. The reference is written here from
the formulas (NAdam: the README; schedules: `keras.optimizers.schedules`'
documentation), in float64 numpy, independent of the package.
"""

import json
import math

import numpy as np

STEPS = 60
LR = 1e-2
SCHEDULES = {
    "ExponentialDecay": dict(initial_learning_rate=LR, decay_steps=7, decay_rate=0.9),
    "ExponentialDecay staircase": dict(initial_learning_rate=LR, decay_steps=7, decay_rate=0.9,
                                       staircase=True),
    "InverseTimeDecay": dict(initial_learning_rate=LR, decay_steps=5, decay_rate=0.3),
    "PolynomialDecay": dict(initial_learning_rate=LR, decay_steps=40, end_learning_rate=1e-4,
                            power=2.0),
    "CosineDecay": dict(initial_learning_rate=LR, decay_steps=50, alpha=0.1),
    "PiecewiseConstantDecay": dict(boundaries=[10, 30], values=[LR, 3e-3, 1e-3]),
}


def keras_schedule(name, c, step):
  """Keras's schedule formulas in float64."""
  if name.startswith("ExponentialDecay"):
    p = step / c["decay_steps"]
    p = math.floor(p) if c.get("staircase") else p
    return c["initial_learning_rate"] * c["decay_rate"] ** p
  if name == "InverseTimeDecay":
    return c["initial_learning_rate"] / (1 + c["decay_rate"] * step / c["decay_steps"])
  if name == "PolynomialDecay":
    p = min(step, c["decay_steps"]) / c["decay_steps"]
    return ((c["initial_learning_rate"] - c["end_learning_rate"]) * (1 - p) ** c["power"]
            + c["end_learning_rate"])
  if name == "CosineDecay":
    p = min(step, c["decay_steps"]) / c["decay_steps"]
    return c["initial_learning_rate"] * ((1 - c["alpha"]) * 0.5 * (1 + math.cos(math.pi * p))
                                         + c["alpha"])
  if name == "PiecewiseConstantDecay":
    return c["values"][sum(step > b for b in c["boundaries"])]
  raise ValueError(name)


def nadam64(params, grads, lr_of_step, b1=0.9, b2=0.999, eps=1e-7, psi=0.004):
  """NAdam in float64 (complex128 for complex params); params after each step."""
  p = [np.array(x, np.promote_types(np.asarray(x).dtype, np.float64)) for x in params]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros(np.shape(x)) for x in p]
  prod, out = 1.0, []
  for t, gs in enumerate(grads, start=1):
    mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
    mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
    prod *= mu
    lr = lr_of_step(t - 1)
    for i, g in enumerate(gs):
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * np.abs(g) ** 2
      m_bar = (1 - mu) * g / (1 - prod) + mu_next * m[i] / (1 - prod * mu_next)
      p[i] = p[i] - lr * m_bar / (np.sqrt(v[i] / (1 - b2**t)) + eps)
    out.append([x.copy() for x in p])
  return out


def _problem(complex_params, steps, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(5, 3), (4,)]

  def draw(s):
    x = rng.normal(size=s)
    return x + 1j * rng.normal(size=s) if complex_params else x

  return [draw(s) for s in shapes], [[draw(s) for s in shapes] for _ in range(steps)]


def _run(tx, params, grads):
  import jax
  import optax

  @jax.jit
  def step(ps, state, gs):
    updates, state = tx.update(gs, state, ps)
    return optax.apply_updates(ps, updates), state

  ps = [jax.numpy.asarray(x) for x in params]
  state = tx.init(ps)
  out = []
  for gs in grads:
    ps, state = step(ps, state, [jax.numpy.asarray(g) for g in gs])
    out.append([np.asarray(x) for x in ps])
  return out, [str(x.dtype) for x in ps]


def _max_err(history, reference):
  return max(float(np.max(np.abs(a - b))) for sa, sb in zip(history, reference)
             for a, b in zip(sa, sb))


def accumulation(complex_params, k=3):
  """Error of Nadam(gradient_accumulation_steps=k) after each applied step."""
  from optax_nadam import keras as okeras

  params, grads = _problem(complex_params, STEPS * k)
  history, dtypes = _run(okeras.Nadam(learning_rate=LR, gradient_accumulation_steps=k),
                         params, grads)
  mean_grads = [[sum(grads[j * k + i][leaf] for i in range(k)) / k for leaf in range(2)]
                for j in range(STEPS)]
  reference = nadam64(params, mean_grads, lambda step: LR)
  applied = [history[j * k + k - 1] for j in range(STEPS)]
  return {"max_error": _max_err(applied, reference), "dtypes": dtypes,
          "moved": _max_err(reference[-1:], [params])}


def schedules():
  """name -> error of Nadam(learning_rate=<Keras schedule config>) on float64 params."""
  from optax_nadam import keras as okeras

  params, grads = _problem(False, STEPS)
  out = {}
  for name, c in SCHEDULES.items():
    spec = {"class_name": name.split()[0], "config": c}
    history, _ = _run(okeras.Nadam(learning_rate=spec), params, grads)
    reference = nadam64(params, grads, lambda step, name=name, c=c: keras_schedule(name, c, step))
    out[name] = _max_err(history, reference)
  return out


def main():
  import jax

  jax.config.update("jax_enable_x64", True)
  result = {"accumulation_float64": accumulation(False),
            "accumulation_complex128": accumulation(True),
            "schedules_float64": schedules()}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
