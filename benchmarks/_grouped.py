"""Probe: `scale_by_nadam` with small leaves grouped into one buffer per dtype.

The issue asks whether grouping many small leaves into one concatenated buffer
for the elementwise work (then splitting back) beats XLA:CPU's per-leaf
kernels. This wrapper does exactly that around the unmodified core, keeping the
public per-leaf state: inside `update` it concatenates the small leaves of the
gradients and of `m` / `v` (per dtype), runs the core's update on the grouped
tree and slices the results back. The elementwise ops are the core's, on the
same values, so the results are the same bits; `benchmarks/run.py` times it as
the "ours, grouped (probe)" row.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import transform


def _plan(leaves, max_size: int, min_count: int):
  """Indices of the small leaves per (dtype, m dtype); only groups of min_count+."""
  groups: dict[Any, list[int]] = {}
  for i, (g, m) in enumerate(leaves):
    if g.size <= max_size:
      groups.setdefault((jnp.dtype(g.dtype), jnp.dtype(m.dtype)), []).append(i)
  return [idx for idx in groups.values() if len(idx) >= min_count]


def grouped(tx: optax.GradientTransformation, max_size: int = 1 << 16,
            min_count: int = 32) -> optax.GradientTransformation:
  """Wraps a `scale_by_nadam` so its update works on grouped small leaves."""

  def update_fn(updates, state, params=None):
    g_leaves, treedef = jax.tree.flatten(updates)
    m_leaves = treedef.flatten_up_to(state.m)
    v_leaves = treedef.flatten_up_to(state.v)
    plan = _plan(list(zip(g_leaves, m_leaves)), max_size, min_count)
    if not plan:
      return tx.update(updates, state, params)
    in_group = {i for idx in plan for i in idx}
    rest = [i for i in range(len(g_leaves)) if i not in in_group]

    def pack(leaves):
      flat = [jnp.concatenate([leaves[i].reshape(-1) for i in idx]) for idx in plan]
      return flat + [leaves[i] for i in rest]

    inner_state = state._replace(m=pack(m_leaves), v=pack(v_leaves))
    steps, new_state = tx.update(pack(g_leaves), inner_state, None)

    def unpack(packed):
      out = [None] * len(g_leaves)
      for buf, idx in zip(packed[:len(plan)], plan):
        offsets = np.cumsum([0] + [g_leaves[i].size for i in idx])
        for j, i in enumerate(idx):
          out[i] = buf[offsets[j]:offsets[j + 1]].reshape(g_leaves[i].shape)
      for buf, i in zip(packed[len(plan):], rest):
        out[i] = buf
      return treedef.unflatten(out)

    return unpack(steps), new_state._replace(
        m=unpack(new_state.m), v=unpack(new_state.v))

  return optax.GradientTransformation(tx.init, update_fn)


def grouped_nadam(learning_rate: float = 1e-3, **kwargs) -> optax.GradientTransformation:
  """`optax_nadam.nadam` with the grouped core (probe)."""
  return optax.chain(grouped(transform.scale_by_nadam(**kwargs)),
                     optax.scale_by_learning_rate(learning_rate))
