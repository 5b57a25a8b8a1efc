"""The numbers of issue 24, measured on this checkout: where the guards meet the formulas.

    python -m benchmarks.guards_check [--torch]

Prints, against the float64 formulas of `tests/helpers/reference.py`:

- float32 gradients the formulas can compute but whose square is near float32's
  max (alternating 1.5e19 / 5e18; N(0, 1) x 1e19): largest |param - formulas| / lr;
- float16 params with Cauchy gradients: median rms error over 6 problems as a multiple
  of the float16 floor (the formulas with params rounded to float16 each step);
  `--torch` adds torch NAdam in float16 on the same problems;
- d update_1 / d b1 under `optax.inject_hyperparams` against the formula's (float32
  g = 10; float64 with eps = 0; float64 with g = 1e10; the x64 cases in a subprocess);
- the float16 and `mu_dtype` cases of the issue: finite or not, and the total move.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import nadam
from tests.helpers import reference as ref

STEPS = 200
LR = 1e-3


def _ours(tx, params, grads, dtype):
  """Our trajectory (list of leaf lists) from float `params` on `grads`, in `dtype`."""
  p = [np.asarray(x, dtype) for x in params]
  g = [[np.asarray(x, dtype) for x in gs] for gs in grads]
  return ref.run_ours(tx, p, g)


def huge_float32():
  """Largest |param - formulas| / lr over 200 steps for two float32 sequences."""
  out = {}
  alt = [[np.float32(1.5e19 if t % 2 == 0 else 5e18) * np.ones(1, np.float32)]
         for t in range(STEPS)]
  rng = np.random.default_rng(0)
  normal = [[(rng.standard_normal(1000) * 1e19).astype(np.float32)] for _ in range(STEPS)]
  for name, grads in (("alternating 1.5e19/5e18", alt), ("N(0,1) x 1e19", normal)):
    params = [np.zeros_like(grads[0][0])]
    ours = _ours(nadam(LR), params, grads, np.float32)
    formulas = ref.reference_nadam(params, grads, lr=LR)
    out[name] = ref.max_abs_error(ours, formulas) / LR
  return out


def cauchy_problem(seed, steps=STEPS):
  """float16 params N(0, 1) and Cauchy gradients (scale 10^U(-1, 0.3)), float16-finite."""
  rng = np.random.default_rng(seed)
  shapes = [(64, 32), (256,), (16, 16)]
  params = [rng.normal(size=s).astype(np.float16) for s in shapes]
  scales = [10.0 ** rng.uniform(-1.0, 0.3) for _ in shapes]
  grads = [[np.clip(rng.standard_cauchy(size=s) * c, -65504, 65504).astype(np.float16)
            for s, c in zip(shapes, scales)] for _ in range(steps)]
  return params, grads


def _rms(history, exact):
  a = np.concatenate([np.asarray(x, np.float64).ravel() for x in history[-1]])
  b = np.concatenate([np.asarray(x, np.float64).ravel() for x in exact[-1]])
  return float(np.sqrt(np.mean((a - b) ** 2)))


def float16_cauchy(with_torch=False, seeds=range(1, 7), lr=1e-2):
  """Median (and range) over `seeds` of rms error / the float16 floor's."""
  ratios, torch_ratios, above = [], [], []
  for seed in seeds:
    params, grads = cauchy_problem(seed)
    above.append(float(np.mean([np.mean(np.abs(g.astype(np.float64)) > 128)
                                 for gs in grads for g in gs])))
    exact = ref.reference_nadam(params, grads, lr=lr)
    floor = _rms(ref.reference_nadam(params, grads, lr=lr, param_dtype=np.float16), exact)
    ratios.append(_rms(_ours(nadam(lr), params, grads, np.float16), exact) / floor)
    if with_torch:
      exact_t = ref.reference_nadam(params, grads, lr=lr, eps=1e-8)
      floor_t = _rms(ref.reference_nadam(params, grads, lr=lr, eps=1e-8,
                                         param_dtype=np.float16), exact_t)
      theirs = ref.run_torch(params, grads, lr, 0.9, 0.999, 1e-8, 0.004)
      torch_ratios.append(_rms(theirs, exact_t) / floor_t)
  out = {"ours / floor (median, min, max)": [float(np.median(ratios)), min(ratios), max(ratios)],
         "fraction of |g| > 128 (min, max)": [min(above), max(above)]}
  if with_torch:
    out["torch / floor (median, min, max)"] = [float(np.median(torch_ratios)),
                                               min(torch_ratios), max(torch_ratios)]
  return out


def _formula_update_1(b1, g, eps, psi=0.004):
  """update_1 of the formulas (lr = 1), with jnp so that jax.grad differentiates it."""
  mu1 = b1 * (1 - 0.5 * 0.96 ** psi)
  mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
  c = mu2 * (1 - b1) / (1 - mu1 * mu2)
  return -(1 + c) * g / (jnp.abs(g) + eps)


def d_update_d_b1(dtype, g, eps):
  """(ours, formula's) d update_1 / d b1 through optax.inject_hyperparams(nadam)."""
  tx = optax.inject_hyperparams(nadam)(learning_rate=1.0, eps=eps)
  params = jnp.zeros((1,), dtype)

  def update_1(b1):
    state = tx.init(params)
    state.hyperparams["b1"] = b1
    u, _ = tx.update(jnp.full((1,), g, dtype), state, params)
    return u[0]

  ours = float(jax.grad(update_1)(jnp.asarray(0.9, dtype)))
  f64 = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  formula = float(jax.grad(lambda b1: _formula_update_1(b1, g, eps))(jnp.asarray(0.9, f64)))
  return ours, formula


def _x64_derivatives():
  jax.config.update("jax_enable_x64", True)
  return {"float64 g=10 eps=0": d_update_d_b1(jnp.float64, 10.0, 0.0),
          "float64 g=1e10": d_update_d_b1(jnp.float64, 1e10, 1e-7)}


def derivatives():
  out = {"float32 g=10": d_update_d_b1(jnp.float32, 10.0, 1e-7)}
  run = subprocess.run([sys.executable, "-m", "benchmarks.guards_check", "--x64"],
                       capture_output=True, text=True, check=True)
  out.update(json.loads(run.stdout.splitlines()[-1]))
  return {k: {"ours": o, "formula": f, "relative error": abs(o - f) / abs(f)}
          for k, (o, f) in out.items()}


def _moves(tx, params, grads):
  state = tx.init(params)
  step = jax.jit(tx.update)
  p, finite = params, True
  for g in grads:
    u, state = step(g, state, p)
    finite &= bool(jnp.all(jnp.isfinite(u)))
    p = optax.apply_updates(p, u)
  return finite, np.asarray(p, np.float64) - np.asarray(params, np.float64)


def narrow_cases():
  """The float16 and mu_dtype cases of the issue: (all updates finite, total move)."""
  f16 = lambda *x: jnp.asarray(x, jnp.float16)  # noqa: E731
  f32 = lambda *x: jnp.asarray(x, jnp.float32)  # noqa: E731
  cases = {
      "float16 nadam(1e-6, b1=0.9, b2=0.5), g=[100,0,0,0] then zeros x 99": (
          nadam(1e-6, b1=0.9, b2=0.5), f16(0, 0, 0, 0),
          [f16(100, 0, 0, 0)] + [f16(0, 0, 0, 0)] * 99),
      "float16 nadam(7e4), zero gradients x 3": (nadam(7e4), f16(0, 0), [f16(0, 0)] * 3),
      "float16 nadam(7e4), g=1 x 3": (nadam(7e4), f16(0, 0), [f16(1, 1)] * 3),
      "float16 nadam(0.0, b1=0.5, b2=0.0, eps=0.0), g=[1e-7 .. 1] x 20": (
          nadam(0.0, b1=0.5, b2=0.0, eps=0.0), f16(0, 0, 0),
          [f16(1.0, 1e-7, 0.0) if t % 2 == 0 else f16(6e-8, 1.0, 0.0) for t in range(20)]),
      "float32, mu_dtype=float16, b1=0, g=[1e5] then [1]": (
          nadam(1e-3, b1=0.0, mu_dtype=jnp.float16), f32(0), [f32(1e5), f32(1)]),
      "float32, mu_dtype=float16, g=[1e6] then 2000 x [-1]": (
          nadam(1e-3, mu_dtype=jnp.float16), f32(0), [f32(1e6)] + [f32(-1)] * 2000),
      "float32, mu_dtype=None, g=[1e6] then 2000 x [-1]": (
          nadam(1e-3), f32(0), [f32(1e6)] + [f32(-1)] * 2000),
  }
  out = {}
  for name, (tx, params, grads) in cases.items():
    try:
      finite, move = _moves(tx, params, grads)
      out[name] = {"finite": finite, "total move": [float(x) for x in move]}
    except (ValueError, TypeError) as e:  # refused by name
      out[name] = {"refused": str(e)}
  return out


def main():
  if sys.argv[1:] == ["--x64"]:
    print(json.dumps(_x64_derivatives()))
    return
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}")
  print("float32 huge gradients, max |param - formulas| / lr:", json.dumps(huge_float32()))
  print("float16 Cauchy, rms error / float16 floor:",
        json.dumps(float16_cauchy("--torch" in sys.argv)))
  print("d update_1 / d b1:", json.dumps(derivatives(), indent=1))
  print("float16 and mu_dtype cases:", json.dumps(narrow_cases(), indent=1))


if __name__ == "__main__":
  main()
