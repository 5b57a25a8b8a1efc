"""float64, complex128 and mixed trees under ``jax_enable_x64``, in a fresh interpreter.

``jax_enable_x64`` is process-global, so `tests/core/test_precision.py` runs this file
with `tests/helpers/subproc.py` and asserts on the ``RESULT {json}`` line it prints:
errors against the float64 formulas of `tests/helpers/reference.py`, digests of
float32 / bf16 / f16 / complex64 runs, and hyperparameter gradients against
finite differences. The problem builders, `low_precision_digests` and
`hypergradients` read no global state: the test process imports this module
too (as ``tests.scripts.x64_precision``, x64 off) for the float32 counterparts.
Nothing here touches jax config at import time.
"""

import hashlib
import json
import sys

import numpy as np

from tests.helpers import reference as ref

STEPS = 200
HYPER_STEPS = 10
# The hyperparameters differentiated through HYPER_STEPS updates (meta-learning).
HYPER = dict(learning_rate=0.05, b1=0.9, b2=0.99, eps=1e-3, momentum_decay=0.004)
HYPER_EPS_ROOT = 1e-16  # d sqrt(v)/dv is infinite at v = 0 (see scale_by_nadam)
FD_REL_STEP = 1e-4  # finite differences: h = FD_REL_STEP * value


def _as(tree, dtype):
  return [np.asarray(x).astype(dtype) for x in tree]


def float64_problems():
  """name -> (params, grads, hyperparameters of `ref.reference_nadam`), float64."""
  out = {}
  p, g = ref.peers_md_problem(STEPS)
  out["peers_md"] = (p, g, dict(lr=1e-2))
  rng = np.random.default_rng(0)  # the problem: standard-normal params and gradients
  shapes = [(7, 3), (11,), (2, 2, 2)]
  out["issue"] = ([rng.normal(size=s) for s in shapes],
                  [[rng.normal(size=s) for s in shapes] for _ in range(STEPS)], dict(lr=1e-2))
  p, g = ref.make_problem(ref.SHAPES["mixed"], STEPS, seed=1)
  out["b1.85-b2.99"] = (p, g, dict(lr=1e-2, b1=0.85, b2=0.99, eps=1e-6))
  p, g = ref.make_problem(ref.SHAPES["mixed"], STEPS, seed=2)
  out["keras3-psi1"] = (p, g, dict(lr=3e-2, b1=0.95, b2=0.9999, eps=1e-8, momentum_decay=1.0))
  p, g = ref.make_problem(ref.SHAPES["mixed"], STEPS, seed=3)
  out["eps_root"] = (p, g, dict(lr=5e-3, b1=0.5, b2=0.67, eps=1e-7, eps_root=1e-10,
                                momentum_decay=0.1))
  p, g = ref.make_problem(ref.SHAPES["mixed"], STEPS, seed=4)
  out["nadamw"] = (p, g, dict(lr=1e-2, weight_decay=1e-2, decoupled=True))
  return {k: (_as(p, np.float64), [_as(gs, np.float64) for gs in g], hp)
          for k, (p, g, hp) in out.items()}


def nadam_for(hp):
  """Our `nadam` (or `nadamw`) for the hyperparameters of `ref.reference_nadam`."""
  import optax_nadam

  kw = dict(b1=hp.get("b1", 0.9), b2=hp.get("b2", 0.999), eps=hp.get("eps", 1e-7),
            eps_root=hp.get("eps_root", 0.0), momentum_decay=hp.get("momentum_decay", 0.004))
  if hp.get("weight_decay"):
    return optax_nadam.nadamw(hp["lr"], weight_decay=hp["weight_decay"], **kw)
  return optax_nadam.nadam(hp["lr"], **kw)


def complex_problem(seed=5):
  rng = np.random.default_rng(seed)
  shapes = [(7, 3), (11,), (2, 2, 2)]
  c = lambda s: rng.normal(size=s) + 1j * rng.normal(size=s)  # noqa: E731
  return [c(s) for s in shapes], [[c(s) for s in shapes] for _ in range(STEPS)]


def low_precision_trees():
  """name -> (params, grads): float32, bfloat16, float16 and complex64 trees."""
  import jax.numpy as jnp

  p, g = ref.make_problem(ref.SHAPES["mixed"], 10, seed=6)
  out = {}
  for dtype in ("float32", "bfloat16", "float16"):
    out[dtype] = ([jnp.asarray(x, dtype) for x in p],
                  [[jnp.asarray(x, dtype) for x in gs] for gs in g])
  out["complex64"] = ([jnp.asarray(x + 0.5j * x, jnp.complex64) for x in p],
                      [[jnp.asarray(x - 0.3j * x, jnp.complex64) for x in gs] for gs in g])
  return out


def low_precision_digests():
  """sha256 of the final params and state of nadam on `low_precision_trees`, per tree.

  Equal digests with x64 on and off prove the float32 path computes the same bits.
  """
  import jax
  import optax

  import optax_nadam

  out = {}
  for name, (params, grads) in low_precision_trees().items():
    txs = {"nadam": optax_nadam.nadam(1e-2)}
    if name == "float32":
      txs["eps_root"] = optax_nadam.nadam(1e-2, eps_root=1e-8, momentum_decay=1.0)
      txs["inject"] = optax.inject_hyperparams(optax_nadam.nadam)(learning_rate=1e-2)
    for tx_name, tx in txs.items():
      hist = ref.run_ours(tx, params, grads)
      state = tx.init(params)
      digest = hashlib.sha256()
      for x in hist[-1]:
        digest.update(np.asarray(x).tobytes() + str(np.asarray(x).dtype).encode())
      out[f"{name}/{tx_name}"] = digest.hexdigest()
      out[f"{name}/{tx_name}/state_dtypes"] = sorted(
          {str(x.dtype) for x in jax.tree.leaves(state)})
  return out


def hyper_problem(dtype):
  """A least-squares model: A (8, 5), b (8,), initial weights (5,)."""
  rng = np.random.default_rng(7)
  return tuple(np.asarray(x).astype(dtype) for x in (
      rng.normal(size=(8, 5)), rng.normal(size=8), rng.normal(size=5)))


def _meta_loss(values, dtype, injected):
  """The least-squares loss after HYPER_STEPS nadam steps, as a function of HYPER."""
  import jax
  import jax.numpy as jnp
  import optax

  import optax_nadam

  a, b, w0 = (jnp.asarray(x) for x in hyper_problem(dtype))
  hp = dict(zip(HYPER, values))
  inner = lambda w: 0.5 * jnp.sum((a @ w - b) ** 2)  # noqa: E731
  if injected:
    tx = optax.inject_hyperparams(optax_nadam.nadam)(eps_root=HYPER_EPS_ROOT, **HYPER)
    state = tx.init(w0)
    state = state._replace(hyperparams=dict(state.hyperparams, **hp))
  else:
    tx = optax_nadam.nadam(eps_root=HYPER_EPS_ROOT, **hp)
    state = tx.init(w0)

  def body(carry, _):
    w, s = carry
    u, s = tx.update(jax.grad(inner)(w), s, w)
    return (optax.apply_updates(w, u), s), None

  (w, _), _ = jax.lax.scan(body, (w0, state), None, length=HYPER_STEPS)
  return inner(w)


def hypergradients(dtype, finite_differences=False):
  """d loss / d hyperparameter by autodiff (closure args and inject_hyperparams).

  Args:
    dtype: the params' dtype ("float64" needs x64).
    finite_differences: also central differences of the closure loss.

  Returns:
    ``{"closure": {name: grad}, "injected": {...}[, "fd": {...}]}``, floats.
  """
  import jax

  values = tuple(HYPER.values())
  out = {}
  for way, injected in (("closure", False), ("injected", True)):
    grads = jax.jit(jax.grad(lambda *v, injected=injected: _meta_loss(v, dtype, injected),
                             argnums=tuple(range(len(values)))))(*values)
    out[way] = {k: float(g) for k, g in zip(HYPER, grads)}
  if finite_differences:
    loss = jax.jit(lambda *v: _meta_loss(v, dtype, False))
    out["fd"] = {}
    for i, name in enumerate(HYPER):
      h = FD_REL_STEP * values[i]

      def at(k, i=i, h=h):
        return float(loss(*(v + k * h if j == i else v for j, v in enumerate(values))))

      # Five-point central difference: truncation error O(h^4).
      out["fd"][name] = (8 * (at(1) - at(-1)) - (at(2) - at(-2))) / (12 * h)
  return out


def _float64_errors():
  return {name: ref.max_abs_error(ref.run_ours(nadam_for(hp), p, g),
                                  ref.reference_nadam(p, g, **hp))
          for name, (p, g, hp) in float64_problems().items()}


def _complex128():
  out = {}
  for name, hp in (("defaults", dict(lr=1e-2)),
                   ("b1.85-eps_root", dict(lr=1e-2, b1=0.85, b2=0.99, eps_root=1e-10))):
    p, g = complex_problem()
    ours = ref.run_ours(nadam_for(hp), p, g)
    out[name] = ref.max_abs_error(ours, ref.reference_nadam(p, g, **hp))
    out["dtype"] = str(ours[-1][0].dtype)
  return out


def _mixed_tree():
  """float64 leaves (7, 5), (11,) and float32 leaves (2, 3, 4), () in one tree."""
  import jax

  p, g = ref.make_problem(ref.SHAPES["mixed"], STEPS, seed=8)
  dtypes = [np.float64, np.float64, np.float32, np.float32]
  p = [x.astype(d) for x, d in zip(p, dtypes)]
  g = [[x.astype(d) for x, d in zip(gs, dtypes)] for gs in g]
  hp = dict(lr=1e-2)
  mixed = ref.run_ours(nadam_for(hp), p, g)
  only32 = ref.run_ours(nadam_for(hp), p[2:], [gs[2:] for gs in g])
  reference = ref.reference_nadam(p, g, **hp)
  state = jax.eval_shape(nadam_for(hp).init, p)
  return {
      "param_dtypes": [str(x.dtype) for x in mixed[-1]],
      "state_dtypes": [str(x.dtype) for x in jax.tree.leaves(state[0])],
      "float64_leaves_error": ref.max_abs_error([s[:2] for s in mixed],
                                                [s[:2] for s in reference]),
      "float32_leaves_vs_float32_run": ref.max_rel_gap(
          [s[2:] for s in mixed], only32, ref.param_scale([s[2:] for s in reference])),
      "float32_leaves_error": ref.max_abs_error([s[2:] for s in mixed],
                                                [s[2:] for s in reference]),
      "float32_run_error": ref.max_abs_error(only32, [s[2:] for s in reference]),
  }


def _low_precision_hlo_has_f64():
  """Whether the lowered update of each low-precision tree mentions a 64-bit float."""
  import jax

  import optax_nadam

  out = {}
  for name, (params, grads) in low_precision_trees().items():
    tx = optax_nadam.nadam(1e-2)
    text = jax.jit(tx.update).lower(grads[0], tx.init(params), params).as_text()
    out[name] = "f64" in text or "complex<f64>" in text
  return out


def main():
  import jax

  if sys.argv[1:] == ["--x64-off-digests"]:
    # The x64-off side of the comparison, on this script's platform (CPU).
    print("RESULT " + json.dumps({"low_precision_digests": low_precision_digests()}), flush=True)
    return
  jax.config.update("jax_enable_x64", True)
  result = {
      "float64_errors": _float64_errors(),
      "complex128": _complex128(),
      "mixed": _mixed_tree(),
      "low_precision_digests": low_precision_digests(),
      "low_precision_hlo_has_f64": _low_precision_hlo_has_f64(),
      "hypergradients": hypergradients("float64", finite_differences=True),
  }
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
