"""Does tx take the peer's next step? tx against the peer's own tx on a few probes (peer-neutral).

An imported state continues the peer's run only if tx also has the peer's
hyperparameters, most of which the state does not show. `check_step` runs tx
and `peer_tx` (this package's NAdam configured as the peer states it) from
the imported state on the same probes and answers yes or no; a no lists the
peer's hyperparameters beside tx's (when tx states them) and the tx that
matches. The probes and why each one shows which hyperparameters are in
docs/migration.md ("How the hyperparameters are checked").
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam import _tree
from optax_nadam._tree import path_str
from optax_nadam.alias import nadam, nadamw
from optax_nadam.interop._nodes import param_paths, read_state
from optax_nadam.transform import ScaleByNadamState

# tx and the peer's tx compute the same float32 formulas: they agree to rounding.
# The smallest mismatch the probes must see moves the step by >= 1e-3 of its scale.
RTOL = 1e-4


class PeerHyperparams(NamedTuple):
  """Everything a peer's NAdam step depends on besides its state, per parameter, in our terms.

  Fields that do not apply to a peer keep their defaults (torch never clips
  inside the optimizer; Keras has no maximize).
  """

  learning_rate: float  # of the peer's NEXT step (a schedule evaluated at the count)
  b1: float
  b2: float
  eps: float
  psi: float  # momentum_decay of the schedule b1 * (1 - 0.5 * 0.96 ** (psi * t))
  weight_decay: float = 0.0
  decoupled_weight_decay: bool = False  # p -= lr * wd * p (torch decoupled, Keras 3)
  maximize: bool = False  # torch: the step ascends (gradient negated first)
  clipnorm: Optional[float] = None  # per-variable norm clip (Keras)
  clipvalue: Optional[float] = None  # elementwise clip (Keras)
  global_clipnorm: Optional[float] = None  # clip by the norm over all variables (Keras)
  clips_in_optimizer: bool = False  # True: the clip fields are the peer's whole truth


def _clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
  """Keras ``clipnorm``: each gradient scaled to norm at most `max_norm`."""
  return optax.stateless(lambda u, _: jax.tree.map(
      lambda g: g * (max_norm / jnp.maximum(jnp.linalg.norm(g), max_norm)), u))


def peer_tx(h: PeerHyperparams, mu_dtype: Any = None) -> optax.GradientTransformation:
  """The tx whose step is the peer's with hyperparameters `h` (Keras's clip order)."""
  clips = h.clips_in_optimizer
  stages = [optax.clip(h.clipvalue)] if clips and h.clipvalue is not None else []
  if clips and h.clipnorm is not None:
    stages.append(_clip_each_by_norm(h.clipnorm))
  if clips and h.global_clipnorm is not None:
    stages.append(optax.clip_by_global_norm(h.global_clipnorm))
  if h.maximize:
    stages.append(optax.scale(-1.0))
  kw = dict(b1=h.b1, b2=h.b2, eps=h.eps, momentum_decay=h.psi, mu_dtype=mu_dtype)
  if h.weight_decay and h.decoupled_weight_decay:
    core = nadamw(h.learning_rate, weight_decay=h.weight_decay, **kw)
  else:
    if h.weight_decay:
      stages.append(optax.add_decayed_weights(h.weight_decay))
    core = nadam(h.learning_rate, **kw)
  return optax.chain(*stages, core) if stages else core


class PeerTx(optax.GradientTransformationExtraArgs):
  """An optax transformation built from a peer's stated hyperparameters, which it prints.

  A plain `optax.GradientTransformationExtraArgs` (init, update) otherwise: it
  works in `optax.chain`, under `jax.jit` and in `nnx.Optimizer`. `hyperparams`
  is a dict, or one dict per parameter group.
  """

  def __repr__(self) -> str:
    stated = getattr(self, "hyperparams", None)
    if isinstance(stated, dict):
      return f"PeerTx({listing(stated)})"
    if isinstance(stated, tuple):
      return "PeerTx(" + "; ".join(f"group {k}: {listing(h)}" for k, h in enumerate(stated)) + ")"
    return super().__repr__()


def printable(tx: optax.GradientTransformation, hypers: Sequence[PeerHyperparams]) -> PeerTx:
  """`tx` as a `PeerTx` stating `hypers` (one per distinct parameter group)."""
  tx = optax.with_extra_args_support(tx)
  out = PeerTx(tx.init, tx.update)
  stated = [describe(h) for h in hypers]
  out.hyperparams = stated[0] if len(stated) == 1 else tuple(stated)
  return out


def describe(h: PeerHyperparams) -> Dict[str, Any]:
  """The hyperparameters of `h` under the names tx's printout uses."""
  out = dict(learning_rate=h.learning_rate, b1=h.b1, b2=h.b2, eps=h.eps, momentum_decay=h.psi,
             weight_decay=h.weight_decay, decoupled_weight_decay=h.decoupled_weight_decay,
             maximize=h.maximize)
  if h.clips_in_optimizer:
    out.update(clipnorm=h.clipnorm, clipvalue=h.clipvalue, global_clipnorm=h.global_clipnorm)
  return out


def listing(values: Dict[str, Any]) -> str:
  fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
  return ", ".join(f"{k}={fmt(v)}" for k, v in values.items())


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


class Probe(NamedTuple):
  """One probe input, per params leaf: gradient, parameter value, and the moments to start from."""

  name: str
  grads: List[np.ndarray]
  params: List[np.ndarray]
  m: List[np.ndarray]
  v: List[np.ndarray]


def probes(hypers: Sequence[PeerHyperparams], leaves: Sequence[Any],
           values: Sequence[np.ndarray]) -> List[Probe]:
  """The probes: each moves the step through other hyperparameters (docs/migration.md)."""
  m = [x[2] for x in leaves]
  v = [x[3] for x in leaves]
  zeros = [np.zeros(np.shape(p)) for p in values]
  small, big, unit_m, tiny = [], [], [], []
  for h, (count, _, _, v_i), p in zip(hypers, leaves, values):
    scale = np.sqrt(np.asarray(v_i, np.float64) / (1.0 - h.b2 ** max(count, 1)))
    scale = np.where(scale > 0, scale, 0.1)
    sign = np.where(np.arange(np.size(p)).reshape(np.shape(p)) % 2 == 0, 1.0, -1.0)
    small.append(0.01 * scale * sign)  # below any sane clipping threshold: the sign
    big.append(1e3 * (scale + 1.0) * sign)  # above it: the clipping
    unit_m.append(h.eps * sign)  # with v = 0 the step is lr * m / eps: eps moves it 1:1
    tiny.append(h.eps * sign)  # empty moments, a gradient the size of eps: eps again
  out = [Probe("g=0, p=0", zeros, zeros, m, v),
         Probe("g=0, p=params", zeros, list(values), m, v),  # weight decay
         Probe("g=delta, p=0", small, zeros, m, v),  # maximize
         Probe("m=eps, v=0, g=0, p=0", zeros, zeros, unit_m, zeros),
         Probe("m=0, v=0, g=delta, p=0", small, zeros, zeros, zeros),  # b2 apart from lr
         Probe("m=0, v=0, g=eps, p=0", tiny, zeros, zeros, zeros)]
  if any(h.clips_in_optimizer for h in hypers):
    out.append(Probe("g=big, p=0", big, zeros, m, v))
  return out


def _with_moments(state: Any, params: Any, m: Sequence[Any], v: Sequence[Any],
                  scalars: Optional[tuple] = None) -> Any:
  """`state` with every nadam node's moments (and, given, its count and mu-product) replaced."""
  index = {p: i for i, p in enumerate(param_paths(params))}

  def fill(_, node):
    def put(values):
      return lambda p, x: jnp.asarray(values[index[path_str(p)]], x.dtype)
    node = node._replace(m=jax.tree_util.tree_map_with_path(put(m), node.m),
                         v=jax.tree_util.tree_map_with_path(put(v), node.v))
    if scalars is not None:
      node = node._replace(count=jnp.asarray(scalars[0], node.count.dtype),
                           mu_product=jnp.asarray(scalars[1], node.mu_product.dtype))
    return node

  return _tree.map_nodes(state, ScaleByNadamState, fill)


def _counts(state: Any) -> List[int]:
  return [int(n.count) for _, n in _tree.find_nodes(state, ScaleByNadamState)]


def _steps(tx, state: Any, params: Any, inputs: Sequence[Probe],
           scalars: Optional[tuple] = None) -> Optional[List[list]]:
  """tx's update on each probe from `state`, per leaf as float64; None if its nadam did not step."""
  like, treedef = jax.tree.flatten(params)
  as_params = lambda xs: jax.tree.unflatten(  # noqa: E731
      treedef, [np.asarray(x, np.asarray(y).dtype) for x, y in zip(xs, like)])
  out = []
  for probe in inputs:
    start = _with_moments(state, params, probe.m, probe.v, scalars)
    updates, after = tx.update(as_params(probe.grads), start, as_params(probe.params))
    if _counts(after) == _counts(start):
      return None  # accumulation (MultiSteps) or a skipped step: nothing to compare
    out.append([np.asarray(u, np.float64) for u in jax.tree.leaves(updates)])
  return out


def _tx_side(tx: Any, h: PeerHyperparams) -> str:
  """tx's own hyperparameters beside the peer's, when tx states them (a printable tx)."""
  stated = getattr(tx, "hyperparams", None)
  if not isinstance(stated, dict):
    return "tx does not state its hyperparameters"
  peer = describe(h)
  differ = [k for k in peer if k in stated and stated[k] != peer[k]]
  return f"tx has {listing(stated)}" + (f" (differing: {', '.join(differ)})" if differ else "")


# Stands in for a frozen leaf's hyperparameters in the probes (its expected step is zero).
_FROZEN = PeerHyperparams(learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, psi=0.004)


def check_step(tx, state: Any, params: Any, hypers: Sequence[PeerHyperparams],
               where: Sequence[str]) -> None:
  """Raises unless tx's next step is the one the peer's hyperparameters give.

  Args:
    tx: the optax transformation that will continue training.
    state: its state for `params`, filled from the peer (schedule counters
      synced); not changed.
    params: the params tree.
    hypers: one `PeerHyperparams` per ``jax.tree.leaves(params)`` entry; None
      for a leaf the peer does not train (frozen), whose step must be zero.
    where: per leaf, how to name it in a message.

  Returns:
    None. A tx whose nadam does not step on this update (inside an
    ``optax.MultiSteps`` accumulation cycle) is not checked.

  Raises:
    ValueError: naming the leaf and the probe, listing the peer's
      hyperparameters beside tx's, and giving the tx that continues the run.
  """
  frozen = {i for i, h in enumerate(hypers) if h is None}
  values = [np.asarray(x) for x in jax.tree.leaves(params)]
  leaves = [x if x is not None else (0, 1.0, np.zeros(p.shape), np.zeros(p.shape))
            for x, p in zip(read_state(state, params, frozen), values)]
  hypers = [_FROZEN if h is None else h for h in hypers]
  inputs = probes(hypers, leaves, values)
  rounded = lambda xs: [np.asarray(np.asarray(x, p.dtype), np.float64)  # noqa: E731
                        for x, p in zip(xs, values)]
  inputs = [x._replace(grads=rounded(x.grads), params=rounded(x.params)) for x in inputs]
  actual = _steps(tx, state, params, inputs)
  if actual is None:
    return
  m_dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(
      [n.m for _, n in _tree.find_nodes(state, ScaleByNadamState)])}
  p_dtypes = {x.dtype for x in values}
  mu_dtype = next(iter(m_dtypes)) if len(m_dtypes) == 1 and m_dtypes != p_dtypes else None
  expected: List[List[Any]] = [[None] * len(values) for _ in inputs]
  groups: Dict[tuple, List[int]] = {}
  for i, (h, (count, mu_product, _, _)) in enumerate(zip(hypers, leaves)):
    if i in frozen:  # the peer does not step it
      for k in range(len(inputs)):
        expected[k][i] = np.zeros(np.shape(values[i]))
      continue
    groups.setdefault((h, count, float(mu_product)), []).append(i)
  for (h, count, mu_product), held in groups.items():
    ref = peer_tx(h, mu_dtype)
    steps = _steps(ref, ref.init(params), params, inputs, (count, mu_product))
    for k, step in enumerate(steps):
      for i in held:
        expected[k][i] = step[i]
  for i, p in enumerate(values):
    # Half-precision params round the step to a few bits: only coarse mismatches show.
    rtol = max(RTOL, 8 * float(jnp.finfo(p.dtype).eps)) if jnp.issubdtype(
        p.dtype, jnp.floating) else RTOL
    scale = max(float(np.max(np.abs(x[i]), initial=0.0)) for x in (*expected, *actual)) or 1.0
    gaps = [float(np.max(np.abs(a[i] - e[i]), initial=0.0)) / scale
            for e, a in zip(expected, actual)]
    if max(gaps) > rtol and i in frozen:
      raise ValueError(f"{where[i]}: the peer does not train it (frozen), but tx moves it; "
                       "leave it unchanged (optax.set_to_zero under optax.multi_transform).")
    if max(gaps) > rtol:
      k = int(np.argmax(gaps))
      raise ValueError(
          f"{where[i]}: tx's next step is not the peer's (on the probe {inputs[k].name!r} it "
          f"differs by {gaps[k]:.2g} of the step's scale). The peer's hyperparameters: "
          f"{listing(describe(hypers[i]))}; {_tx_side(tx, hypers[i])}. The tx that continues "
          f"the peer's run: {matching_tx(hypers[i])}. If the change is deliberate (e.g. a new "
          "learning rate after resuming), pass check_hyperparams=False.")
