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
- ``m = eps * sign, v = 0, g = 0`` (crafted moments): the step is ``lr * m /
  eps`` up to the schedule's coefficients, so eps moves it one to one (a 10x
  eps difference changes it 10x, where the imported moments, with
  ``sqrt(v_hat)`` far above eps, hide it);
- ``m = 0, v = 0, g = delta``: the gradient alone sets the step, through
  ``(1 - b2) / (1 - b2 ** t)`` instead of the imported moments'
  ``b2 / (1 - b2 ** t)``, so b2 and the learning rate (a pure scale) move
  the probes differently and are told apart;
- ``g = big, p = 0``, only for peers that clip inside the optimizer (Keras
  ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``): the clipping.

On a mismatch, the hyperparameter is named by estimating tx's value of each
one in turn (learning rate, eps, weight decay, maximize, b2) and keeping the
one whose peer step then matches every probe; when none or several do, the
message says no single one explains it. ``tx.update`` is functional: the
probes never change the state that is returned.

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

from typing import Any, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam import _tree
from optax_nadam._tree import path_str
from optax_nadam.interop._nodes import find_nadam_states, param_paths, read_state, storage_dtypes
from optax_nadam.interop._peer_step import PeerHyperparams, peer_step
from optax_nadam.transform import ScaleByNadamState

# tx computes the step in float32 from float32 state: agreement to ~1e-6 of the
# leaf's step scale. The smallest mismatch the probes must see (the sign of the
# 1% gradient probe, eps 1e-3 vs 1e-8 at gradients ~0.1) moves it by >= 1e-3.
RTOL = 1e-4
_CLIP_PROBE = "g=big, p=0"


class Probe(NamedTuple):
  """One probe: tx's update from `state` on `grads` at `params` (per leaf float64 lists)."""

  name: str
  grads: List[np.ndarray]
  params: List[np.ndarray]
  state: Any  # the imported state, or one with crafted moments
  leaves: List[Any]  # per leaf (count, mu_product, m, v) of `state`, as tx sees them
  storage: List[Any]  # per leaf the dtypes (m, v) are stored in (`storage_dtypes`)


def _with_moments(state: Any, params: Any, m: Sequence[Any], v: Sequence[Any]) -> Any:
  """`state` with every nadam node's moments replaced (per params leaf, in its dtype)."""
  index = {p: i for i, p in enumerate(param_paths(params))}

  def fill(_, node):
    def put(values):
      return lambda p, x: jnp.asarray(values[index[path_str(p)]], x.dtype)
    return node._replace(m=jax.tree_util.tree_map_with_path(put(m), node.m),
                         v=jax.tree_util.tree_map_with_path(put(v), node.v))

  return _tree.map_nodes(state, ScaleByNadamState, fill)


def probes(hypers: Sequence[PeerHyperparams], state: Any, params: Any) -> List[Probe]:
  """The probes (see the module docstring), rounded to what tx sees."""
  values = [np.asarray(x) for x in jax.tree.leaves(params)]
  leaves = read_state(state, params)
  rounded = lambda xs: [np.asarray(np.asarray(x, v.dtype), np.float64)  # noqa: E731
                        for x, v in zip(xs, values)]
  zeros = [np.zeros(np.shape(p)) for p in values]
  small, big, unit_m = [], [], []
  for h, (count, _, _, v), p in zip(hypers, leaves, values):
    scale = np.sqrt(np.asarray(v, np.float64) / (1.0 - h.b2 ** max(count, 1)))
    scale = np.where(scale > 0, scale, 0.1)
    sign = np.where(np.arange(np.size(p)).reshape(np.shape(p)) % 2 == 0, 1.0, -1.0)
    small.append(0.01 * scale * sign)
    big.append(1e3 * (scale + 1.0) * sign)
    unit_m.append(h.eps * sign)  # with v = 0 the step is lr * m / eps: eps moves it 1:1
  storage = storage_dtypes(state, params)
  out = [Probe("g=0, p=0", zeros, zeros, state, leaves, storage),
         Probe("g=0, p=params", zeros, values, state, leaves, storage),
         Probe("g=delta, p=0", small, zeros, state, leaves, storage)]
  crafted = _with_moments(state, params, unit_m, zeros)
  out.append(Probe("m=eps, v=0, g=0, p=0", zeros, zeros, crafted, read_state(crafted, params),
                   storage))
  # m = v = 0: the gradient alone sets the step, with another dependence on b2
  # than the imported moments have: b2 and the learning rate are told apart.
  crafted = _with_moments(state, params, zeros, zeros)
  out.append(Probe("m=0, v=0, g=delta, p=0", small, zeros, crafted,
                   read_state(crafted, params), storage))
  if any(h.clips_in_optimizer for h in hypers):
    out.append(Probe(_CLIP_PROBE, big, zeros, state, leaves, storage))
  return [x._replace(grads=rounded(x.grads), params=rounded(x.params)) for x in out]


def tx_steps(tx, params: Any, inputs: Sequence[Probe]) -> Optional[List[list]]:
  """tx's update on each probe, per leaf as float64; None if tx's nadam did not step."""
  like, treedef = jax.tree.flatten(params)
  as_params = lambda xs: jax.tree.unflatten(  # noqa: E731
      treedef, [np.asarray(x, np.asarray(y).dtype) for x, y in zip(xs, like)])
  out = []
  for probe in inputs:
    before = [int(n.count) for _, n in find_nadam_states(probe.state)]
    updates, after = tx.update(as_params(probe.grads), probe.state, as_params(probe.params))
    if [int(n.count) for _, n in find_nadam_states(after)] == before:
      return None  # accumulation (MultiSteps) or a skipped step: nothing to compare
    out.append([np.asarray(u, np.float64) for u in jax.tree.leaves(updates)])
  return out


def _expected(hypers: Sequence[PeerHyperparams], inputs: Sequence[Probe]) -> List[list]:
  return [peer_step(hypers, x.leaves, x.grads, x.params, x.storage) for x in inputs]


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


def _leaf_gap(h: PeerHyperparams, inputs: Sequence[Probe], actual, i: int) -> float:
  """Leaf i's largest probe gap if the peer had hyperparameters `h` (no global clip)."""
  h = h._replace(global_clipnorm=None)
  expected = [peer_step([h], [x.leaves[i]], [x.grads[i]], [x.params[i]], [x.storage[i]])
              for x in inputs]
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


def _candidates(h: PeerHyperparams, inputs: Sequence[Probe], actual, i: int):
  """``(field, peer value, tx's estimated value, hyperparameters)`` per hyperparameter."""
  gap = lambda x: _leaf_gap(x, inputs, actual, i)  # noqa: E731
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
  b2 = 1.0 - _fit(lambda x: gap(h._replace(b2=1.0 - x)), 1e-4, 0.5, zero=False)
  yield "b2", h.b2, b2, h._replace(b2=b2)


def diagnose(hypers: Sequence[PeerHyperparams], inputs: Sequence[Probe], actual, i: int,
             where: str, rtol: float = RTOL) -> str:
  """The error message for leaf i: which hyperparameter differs, both values, the fix.

  A hyperparameter is named only if changing it alone makes the peer's step
  tx's on every probe (to 10 `rtol`); otherwise the message says no single
  one explains it. The probes move the step differently for each
  hyperparameter (see the module docstring), so at most one fits.
  """
  h = hypers[i]
  per_probe = gaps(_expected(hypers, inputs), actual, i)
  probe = inputs[int(np.argmax(per_probe))].name
  fix = (f"The tx that continues the peer's run: {matching_tx(h)}. If the change is "
         "deliberate (e.g. a new learning rate after resuming), pass check_hyperparams=False.")
  if probe == _CLIP_PROBE and sorted(per_probe)[-2] <= rtol:
    clips = {k: getattr(h, k) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    return (f"{where}: tx's next step is not the peer's: clipping differs (the peer clips "
            f"gradients with {clips}; tx does not clip a large gradient the same way). {fix}")
  # The per-leaf fits below cannot model a global norm clip: leave the clip probe out.
  inputs, actual = zip(*[(x, a) for x, a in zip(inputs, actual) if x.name != _CLIP_PROBE])
  base = _leaf_gap(h, inputs, actual, i)
  fits = sorted(((_leaf_gap(c[3], inputs, actual, i), c) for c in
                 _candidates(h, inputs, actual, i)), key=lambda x: x[0])
  # Named: what fits about as well as the best (and within 10 rtol); one, or none is.
  named = [c for g, c in fits if g <= min(10 * rtol, 3 * fits[0][0] + RTOL)]
  if len(named) == 1:
    fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
    field, theirs, ours, _ = named[0]
    return (f"{where}: tx's next step is not the peer's: {field} differs (the peer has "
            f"{field}={fmt(theirs)}, tx steps as with {field}={fmt(ours)}). {fix}")
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
  inputs = probes(hypers, state, params)
  actual = tx_steps(tx, params, inputs)
  if actual is None:
    return
  expected = _expected(hypers, inputs)
  for i, v in enumerate(jax.tree.leaves(params)):
    dtype = np.asarray(v).dtype
    # Half-precision params round tx's step to a few bits: only coarse mismatches show.
    rtol = max(RTOL, 8 * float(jnp.finfo(dtype).eps)) if jnp.issubdtype(
        dtype, jnp.floating) else RTOL
    if max(gaps(expected, actual, i)) > rtol:
      raise ValueError(diagnose(hypers, inputs, actual, i, where[i], rtol))
