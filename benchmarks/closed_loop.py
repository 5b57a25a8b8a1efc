"""float32 against float64 where the gradients depend on the params (training), with x64.

    python -m benchmarks.closed_loop

On logistic regression and a small MLP (synthetic data, seeds 0-3), prints:

- the float32 run's rms error over the params after 200 steps against the float64 run
  of the same optimizer (the formulas to 1e-15, docs/reliability.md), as a multiple
  of the float32 floor (the float64 run with its params rounded to float32 each step);
- float32 hyperparameter gradients (d loss after 10 steps / d learning_rate, b1, b2,
  eps, momentum_decay; eps_root = 1e-16) against the float64 ones, relative.

The float32 runs take float32 hyperparameters and data, so they are what a process
without x64 computes (the package's float32 path does not depend on x64:
tests/core/test_precision.py checks it bit for bit).
"""

import json

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_nadam  # noqa: E402

STEPS = 200
HYPER_STEPS = 10
HYPER = dict(learning_rate=0.05, b1=0.9, b2=0.99, eps=1e-3, momentum_decay=0.004)


def problems(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(256, 20))
  w_true = rng.normal(size=20)
  y = (x @ w_true + 0.5 * rng.normal(size=256) > 0).astype(np.float64)
  logistic = dict(params={"w": rng.normal(size=20) * 0.1, "b": np.zeros(())},
                  data=(x, y), loss=_logistic)
  xr = rng.normal(size=(256, 8))
  yr = np.sin(xr[:, :1] * 2.0) + 0.1 * rng.normal(size=(256, 1))
  mlp = dict(params={"w1": rng.normal(size=(8, 32)) / np.sqrt(8), "b1": np.zeros(32),
                     "w2": rng.normal(size=(32, 1)) / np.sqrt(32), "b2": np.zeros(1)},
             data=(xr, yr), loss=_mlp)
  return {"logistic regression": logistic, "MLP 8-32-1": mlp}


def _logistic(p, x, y):
  z = x @ p["w"] + p["b"]
  return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


def _mlp(p, x, y):
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def _cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def run(problem, dtype, round_to=None, lr=1e-2):
  params, data = _cast(problem["params"], dtype), _cast(problem["data"], dtype)
  tx = optax_nadam.nadam(lr)
  loss = problem["loss"]

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p, *data), s, p)
    p = optax.apply_updates(p, u)
    if round_to is not None:
      p = jax.tree.map(lambda a: a.astype(round_to).astype(a.dtype), p)
    return p, s

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(params)])


def _meta_grads(problem, dtype):
  data = _cast(problem["data"], dtype)
  loss = problem["loss"]

  def meta(*values):
    tx = optax_nadam.nadam(eps_root=1e-16, **dict(zip(HYPER, values)))
    p = _cast(problem["params"], dtype)
    s = tx.init(p)
    for _ in range(HYPER_STEPS):
      u, s = tx.update(jax.grad(loss)(p, *data), s, p)
      p = optax.apply_updates(p, u)
    return loss(p, *data)

  values = [jnp.asarray(v, dtype) for v in HYPER.values()]
  grads = jax.jit(jax.grad(meta, argnums=tuple(range(len(values)))))(*values)
  return {k: float(g) for k, g in zip(HYPER, grads)}


def main():
  out = {}
  for seed in range(4):
    for name, problem in problems(seed).items():
      exact = run(problem, jnp.float64)
      floor = np.sqrt(np.mean((run(problem, jnp.float64, round_to=jnp.float32) - exact) ** 2))
      ours = np.sqrt(np.mean((run(problem, jnp.float32) - exact) ** 2))
      g64, g32 = _meta_grads(problem, jnp.float64), _meta_grads(problem, jnp.float32)
      rel = {k: abs(g32[k] - g64[k]) / abs(g64[k]) for k in HYPER}
      out.setdefault(name, []).append({"seed": seed, "ours / floor": ours / floor,
                                       "floor rms": floor, "hypergradient rel. error": rel})
  for name, rows in out.items():
    ratios = [r["ours / floor"] for r in rows]
    print(f"{name}: float32 rms error / float32 floor over seeds 0-3: median "
          f"{np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    for k in HYPER:
      errs = [r["hypergradient rel. error"][k] for r in rows]
      print(f"  d loss_{HYPER_STEPS} / d {k}: float32 vs float64 relative error "
            f"{min(errs):.1e}-{max(errs):.1e}")
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
