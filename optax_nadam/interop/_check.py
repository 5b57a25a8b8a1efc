"""Does tx take the peer's next step? Hyperparameters checked by probing (peer-neutral).

An imported state continues the peer's run only if tx also has the peer's
hyperparameters (learning rate, b2, eps, weight decay, sign, clipping). They
are not state, and most of them are invisible in ``tx.init(params)``; so
`check_step` runs ``tx.update`` on a few probe inputs from the imported state
and compares the updates with the step the peer's hyperparameters give
(`peer_step`, float64, the torch / Keras NAdam formulas). The probes isolate
the hyperparameters:

- ``g = 0, p = 0``: the momentum part of the step (learning rate, eps, b2);
- ``g = 0, p = params``: adds the weight decay (coupled or decoupled);
- ``g = delta, p = 0`` (``delta`` 1% of the gradient scale ``sqrt(v_hat)``,
  below any sane clipping threshold): the sign of the gradient (maximize);
- ``g = big, p = 0``, only for peers that clip inside the optimizer (Keras
  ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``): the clipping.

On a mismatch, the hyperparameter is named by estimating tx's value of each
one in turn (learning rate, eps, weight decay, maximize, clipping) and keeping
the one whose peer step then matches the probes. ``tx.update`` is functional:
the probes never change the state that is returned.

How to call it (the Keras front does so through
``build_state(..., hyperparams=[...], check_hyperparams=True)``)::

  hyper = PeerHyperparams(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-7,
                          psi=1.0, weight_decay=0.004,
                          decoupled_weight_decay=True, clipnorm=1.0,
                          clips_in_optimizer=True)
  check_step(tx, state, params, [hyper] * n_leaves, where)  # raises ValueError

where `state` is the filled state for `params` (steps counters synced) and
``where[i]`` names leaf i in messages (e.g. ``"Keras variable 0 (params leaf
['w'])"``).
"""

from typing import Any, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam.interop._nodes import find_nadam_states, read_state
from optax_nadam.interop._peer_step import PeerHyperparams, peer_step

# tx computes the step in float32 from float32 state: agreement to ~1e-6 of the
# leaf's step scale. The smallest mismatch the probes must see (the sign of the
# 1% gradient probe, eps 1e-3 vs 1e-8 at gradients ~0.1) moves it by >= 1e-3.
RTOL = 1e-4
_CLIP_PROBE = "g=big, p=0"


def probes(hypers: Sequence[PeerHyperparams], leaves: Sequence[Any],
           params: Sequence[np.ndarray]) -> List[tuple]:
  """``[(name, grads, params), ...]``: the probe inputs (see the module docstring)."""
  zeros = [np.zeros(np.shape(p)) for p in params]
  small, big = [], []
  for h, (count, _, _, v), p in zip(hypers, leaves, params):
    scale = np.sqrt(np.asarray(v, np.float64) / (1.0 - h.b2 ** max(count, 1)))
    scale = np.where(scale > 0, scale, 0.1)
    sign = np.where(np.arange(np.size(p)).reshape(np.shape(p)) % 2 == 0, 1.0, -1.0)
    small.append(0.01 * scale * sign)
    big.append(1e3 * (scale + 1.0) * sign)
  out = [("g=0, p=0", zeros, zeros), ("g=0, p=params", zeros, list(params)),
         ("g=delta, p=0", small, zeros)]
  if any(h.clips_in_optimizer for h in hypers):
    out.append((_CLIP_PROBE, big, zeros))
  return out


def tx_steps(tx, state: Any, params: Any, inputs: Sequence[tuple]) -> Optional[List[list]]:
  """tx's update on each probe, per leaf as float64; None if tx's nadam did not step."""
  like, treedef = jax.tree.flatten(params)
  as_params = lambda xs: jax.tree.unflatten(  # noqa: E731
      treedef, [np.asarray(x, np.asarray(y).dtype) for x, y in zip(xs, like)])
  before = [int(n.count) for _, n in find_nadam_states(state)]
  out = []
  for _, grads, ps in inputs:
    updates, after = tx.update(as_params(grads), state, as_params(ps))
    if [int(n.count) for _, n in find_nadam_states(after)] == before:
      return None  # accumulation (MultiSteps) or a skipped step: nothing to compare
    out.append([np.asarray(u, np.float64) for u in jax.tree.leaves(updates)])
  return out


def gaps(expected: Sequence[list], actual: Sequence[list], i: int) -> List[float]:
  """Per probe, leaf i's max |tx - peer| relative to the leaf's largest step (either's)."""
  scale = max(float(np.max(np.abs(x[i]), initial=0.0)) for x in (*expected, *actual))
  scale = scale or 1.0
  return [float(np.max(np.abs(a[i] - e[i]), initial=0.0)) / scale
          for e, a in zip(expected, actual)]


def matching_tx(h: PeerHyperparams) -> str:
  """The optax tx, as code, whose step is the peer's with hyperparameters `h`."""
  args = (f"{h.learning_rate:g}, b1={h.b1:g}, b2={h.b2:g}, eps={h.eps:g}, "
          f"momentum_decay={h.psi:g}")
  if h.clips_in_optimizer and h.clipnorm is not None:
    return (f"optax_nadam.keras.Nadam(learning_rate={h.learning_rate:g}, beta_1={h.b1:g}, "
            f"beta_2={h.b2:g}, epsilon={h.eps:g}, clipnorm={h.clipnorm:g}, ...) "
            "(per-variable norm clipping)")
  if h.weight_decay and h.decoupled_weight_decay:
    tx = f"optax_nadam.nadamw({args}, weight_decay={h.weight_decay:g})"
  else:
    tx = f"optax_nadam.nadam({args})"
  stages = []
  if h.clips_in_optimizer and h.clipvalue is not None:
    stages.append(f"optax.clip({h.clipvalue:g})")
  if h.clips_in_optimizer and h.global_clipnorm is not None:
    stages.append(f"optax.clip_by_global_norm({h.global_clipnorm:g})")
  if h.maximize:
    stages.append("optax.scale(-1.0)")
  if h.weight_decay and not h.decoupled_weight_decay:
    stages.append(f"optax.add_decayed_weights({h.weight_decay:g})")
  return f"optax.chain({', '.join(stages + [tx])})" if stages else tx


def _leaf_gap(h: PeerHyperparams, leaf: Any, inputs, actual, i: int) -> float:
  """Leaf i's largest probe gap if the peer had hyperparameters `h` (no global clip)."""
  h = h._replace(global_clipnorm=None)
  expected = [peer_step([h], [leaf], [g[i]], [p[i]]) for _, g, p in inputs]
  return max(gaps(expected, [[a[i]] for a in actual], 0))


def _fit(gap_of, lo: float, hi: float, zero: bool = True) -> float:
  """The x in [lo, hi] (log scale, or 0 if `zero`) that minimizes ``gap_of(x)``."""
  grid = [0.0 if zero else lo / 2] + list(np.geomspace(lo, hi, 29))
  k = int(np.argmin([gap_of(x) for x in grid]))
  if k == 0:
    return grid[0]
  a, b = np.log(grid[max(k - 1, 1)]), np.log(grid[min(k + 1, len(grid) - 1)])
  for _ in range(30):  # golden-section search between the grid neighbours
    c, d = b - 0.618 * (b - a), a + 0.618 * (b - a)
    if gap_of(np.exp(c)) < gap_of(np.exp(d)):
      b = d
    else:
      a = c
  return float(np.exp((a + b) / 2))


def _candidates(h: PeerHyperparams, leaf: Any, inputs, actual, i: int):
  """``(field, peer value, tx's estimated value, hyperparameters)`` per hyperparameter."""
  gap = lambda x: _leaf_gap(x, leaf, inputs, actual, i)  # noqa: E731
  lr = _fit(lambda x: gap(h._replace(learning_rate=x)), 1e-8, 1e2)
  yield "learning_rate", h.learning_rate, lr, h._replace(learning_rate=lr)
  eps = _fit(lambda x: gap(h._replace(eps=x)), 1e-12, 1.0)
  yield "eps", h.eps, eps, h._replace(eps=eps)
  yield "maximize", h.maximize, not h.maximize, h._replace(maximize=not h.maximize)
  for decoupled in (h.decoupled_weight_decay, not h.decoupled_weight_decay):
    wd = _fit(lambda x, c=decoupled: gap(h._replace(weight_decay=x, decoupled_weight_decay=c)),
              1e-6, 10.0)
    new = h._replace(weight_decay=wd, decoupled_weight_decay=decoupled)
    if decoupled == h.decoupled_weight_decay:
      yield "weight_decay", h.weight_decay, wd, new
    elif wd > 0:  # no weight decay is the same either way: named above
      yield "decoupled_weight_decay", h.decoupled_weight_decay, decoupled, new
  # On small-gradient probes b2 acts almost as a scale, like the learning rate:
  # fit it over the values peers use only, and expect both to be named then.
  b2 = 1.0 - _fit(lambda x: gap(h._replace(b2=1.0 - x)), 1e-4, 0.5, zero=False)
  yield "b2", h.b2, b2, h._replace(b2=b2)


def diagnose(hypers: Sequence[PeerHyperparams], leaves: Sequence[Any], inputs, actual,
             i: int, where: str, rtol: float = RTOL) -> str:
  """The error message for leaf i: which hyperparameter differs, both values, the fix.

  A hyperparameter is named only if changing it alone makes the peer's step
  tx's (to 10 `rtol`); otherwise the message says no single one explains it.
  """
  h = hypers[i]
  per_probe = gaps([peer_step(hypers, leaves, g, p) for _, g, p in inputs], actual, i)
  probe = inputs[int(np.argmax(per_probe))][0]
  fix = (f"The tx that continues the peer's run: {matching_tx(h)}. If the change is "
         "deliberate (e.g. a new learning rate after resuming), pass check_hyperparams=False.")
  if probe == _CLIP_PROBE and sorted(per_probe)[-2] <= rtol:
    clips = {k: getattr(h, k) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    return (f"{where}: tx's next step is not the peer's: clipping differs (the peer clips "
            f"gradients with {clips}; tx does not clip a large gradient the same way). {fix}")
  # The per-leaf fits below cannot model a global norm clip: leave the clip probe out.
  inputs, actual = zip(*[(x, a) for x, a in zip(inputs, actual) if x[0] != _CLIP_PROBE])
  base = _leaf_gap(h, leaves[i], inputs, actual, i)
  fits = sorted(((_leaf_gap(c[3], leaves[i], inputs, actual, i), c) for c in
                 _candidates(h, leaves[i], inputs, actual, i)), key=lambda x: x[0])
  # Name what fits about as well as the best (b2 and the learning rate are
  # nearly interchangeable on small-gradient probes): both are then named.
  named = [c for g, c in fits if g <= min(10 * rtol, 3 * fits[0][0] + RTOL)]
  if named:
    fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
    fields = " or ".join(c[0] for c in named)
    theirs = ", ".join(f"{c[0]}={fmt(c[1])}" for c in named)
    ours = " or ".join(f"{c[0]}={fmt(c[2])}" for c in named)
    return (f"{where}: tx's next step is not the peer's: {fields} differs (the peer has "
            f"{theirs}, tx steps as with {ours}). {fix}")
  return (f"{where}: tx's next step is not the peer's (it differs by {base:.2g} of the "
          f"step's scale on the probe {probe!r}) and no single hyperparameter explains it. "
          f"The peer's hyperparameters: {h}. {fix}")


def check_step(tx, state: Any, params: Any, hypers: Sequence[PeerHyperparams],
               where: Sequence[str]) -> None:
  """Raises unless tx's next step is the one the peer's hyperparameters give.

  Args:
    tx: the optax transformation that will continue training.
    state: its state for `params`, filled from the peer (schedule counters
      synced), unchanged by this check.
    params: the params tree.
    hypers: one `PeerHyperparams` per ``jax.tree.leaves(params)`` entry.
    where: per leaf, how to name it in a message.

  Returns:
    None. A tx whose nadam does not step on this update (inside an
    ``optax.MultiSteps`` accumulation cycle) is not checked.

  Raises:
    ValueError: naming the leaf, the hyperparameter, the peer's value and tx's
      (estimated) value, and the tx that continues the peer's run.
  """
  leaves = read_state(state, params)
  values = [np.asarray(x) for x in jax.tree.leaves(params)]
  # What tx sees: the probes rounded to the params' dtypes.
  inputs = [(name, [np.asarray(np.asarray(x, v.dtype), np.float64) for x, v in zip(g, values)],
             [np.asarray(np.asarray(x, v.dtype), np.float64) for x, v in zip(p, values)])
            for name, g, p in probes(hypers, leaves, values)]
  actual = tx_steps(tx, state, params, inputs)
  if actual is None:
    return
  expected = [peer_step(hypers, leaves, g, p) for _, g, p in inputs]
  for i, v in enumerate(values):
    # Half-precision params round tx's step to a few bits: only coarse mismatches show.
    rtol = max(RTOL, 8 * float(jnp.finfo(v.dtype).eps)) if jnp.issubdtype(
        v.dtype, jnp.floating) else RTOL
    if max(gaps(expected, actual, i)) > rtol:
      raise ValueError(diagnose(hypers, leaves, inputs, actual, i, where[i], rtol))
