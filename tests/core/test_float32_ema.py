"""The float32 EMAs are unbiased: their weights sum to 1 in float32.

Before the scalars were made consistent, ``b2`` was rounded to float32 while
``1 - b2`` was rounded separately from float64: the weights summed to
1 + 1.3e-8 and the stored ``v`` carried a relative bias of +1.25e-5 after 5000
steps with b2 = 0.999 (3.8e-5 with 0.9999), optax.adam's and torch's too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_nadam import scale_by_nadam

STEPS, SIZE = 5000, 1000


def _moments(b1, b2):
  """Stored m and v after STEPS float32 steps, and float64 EMAs of the same gradients.

  Returns ``(m32, v32, {name: (m64, v64)})`` with the float64 EMAs at the
  user's betas ("exact") and at the float32-rounded betas ("rounded"): the
  betas a float32 state can hold, which the float32 EMAs must follow.
  """
  rng = np.random.default_rng(0)
  # A steady drift under the noise: the EMAs sit at a nonzero mean.
  grads = (1.0 + 0.5 * rng.normal(size=(STEPS, SIZE))).astype(np.float32)
  tx = scale_by_nadam(b1=b1, b2=b2)

  @jax.jit
  def run(grads):
    def body(state, g):
      return tx.update(g, state)[1], None
    return jax.lax.scan(body, tx.init(jnp.zeros(SIZE, jnp.float32)), grads)[0]

  state = run(jnp.asarray(grads))
  g64 = grads.astype(np.float64)
  references = {}
  for name, (c1, c2) in {"exact": (b1, b2),
                         "rounded": (float(np.float32(b1)), float(np.float32(b2)))}.items():
    m = v = np.zeros(SIZE)
    for g in g64:
      m = c1 * m + (1 - c1) * g
      v = c2 * v + (1 - c2) * g * g
    references[name] = (m, v)
  return np.asarray(state.m, np.float64), np.asarray(state.v, np.float64), references


def _bias(x, ref):
  return float(np.mean(x - ref) / np.mean(ref))


@pytest.mark.parametrize("b2", [0.999, 0.9999])
def test_v_and_m_have_no_float32_bias_after_5000_steps(b2):
  m32, v32, refs = _moments(0.9, b2)
  (m64, v64), (m64_exact, v64_exact) = refs["rounded"], refs["exact"]
  # What the step uses: v / (1 - b2^t), with the b2 each side's EMA uses.
  corrected_32 = v32 / (1 - float(np.float32(b2)) ** STEPS)
  corrected_64 = v64_exact / (1 - b2**STEPS)
  print(f"\nb2 = {b2}: relative bias after {STEPS} steps: stored v {_bias(v32, v64):.3g}, "
        f"m {_bias(m32, m64):.3g} (against float64 EMAs at the float32-rounded betas); "
        f"bias-corrected v {_bias(corrected_32, corrected_64):.3g} (against float64 at the "
        f"exact b2)")
  assert abs(_bias(v32, v64)) < 1e-6
  assert abs(_bias(m32, m64)) < 1e-6
  assert abs(_bias(m32, m64_exact)) < 1e-6
  assert abs(_bias(corrected_32, corrected_64)) < 1e-6
