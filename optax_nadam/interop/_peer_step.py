"""The step a peer NAdam takes from a state, given its hyperparameters (float64).

`PeerHyperparams` holds, in our terms, everything a peer's step depends on
besides its state; `peer_step` is the torch / Keras update rule written out in
numpy float64, used by `optax_nadam.interop._check` as the reference tx must
match.
"""

import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from optax_nadam import _bounds
from optax_nadam.transform import momentum_coefficient


class PeerHyperparams(NamedTuple):
  """The hyperparameters of a peer optimizer for one parameter, in our terms.

  Everything a peer's NAdam step depends on besides its state. Fields that do
  not apply to a peer keep their defaults (torch never clips inside the
  optimizer; Keras has no maximize).
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


def _clip(hypers: Sequence[PeerHyperparams], grads: List[np.ndarray]) -> List[np.ndarray]:
  """Keras's gradient clipping (tf-keras order: value, norm, global norm)."""
  out = []
  for h, g in zip(hypers, grads):
    if h.clips_in_optimizer and h.clipvalue is not None:
      g = np.clip(g, -h.clipvalue, h.clipvalue)
    if h.clips_in_optimizer and h.clipnorm is not None:
      norm = float(np.sqrt(np.sum(g * g)))
      g = g * (h.clipnorm / max(norm, h.clipnorm))
    out.append(g)
  clip = next((h.global_clipnorm for h in hypers
               if h.clips_in_optimizer and h.global_clipnorm is not None), None)
  if clip is not None:
    norm = float(np.sqrt(sum(np.sum(g * g) for g in out)))
    out = [g * (clip / max(norm, clip)) for g in out]
  return out


def _step_bound(h: "PeerHyperparams", t: int, mu_t: float, mu_next: float,
                product: float) -> float:
  """NAdam's attained bound on ``|m_bar / denominator|`` for the peer's step `t`."""
  log_b1 = math.log(h.b1) if h.b1 > 0 else -math.inf
  if h.b1 <= 0:
    log_r = -math.inf
  else:
    log_r = 2.0 * log_b1 - math.log(h.b2) if h.b2 > 0 else math.inf
  return float(_bounds.step_bound(
      float(t), (1.0 - mu_t) / (1.0 - product), mu_next / (1.0 - product * mu_next),
      1.0 - h.b1, 1.0 - h.b2, 1.0 - h.b2 ** t, log_b1, log_r))


def _tx_cuts(h: "PeerHyperparams", storage: Tuple[Any, Any]) -> bool:
  """Whether tx with hyperparameters `h` cuts the step of a leaf stored as `storage`."""
  m_dtype, v_dtype = (jnp.dtype(d) for d in storage)
  return _bounds.step_cut_needed(jnp.promote_types(v_dtype, jnp.float32), m_dtype, v_dtype,
                                 h.b1, h.b2, h.eps, 0.0)


def peer_step(hypers: Sequence[PeerHyperparams], leaves: Sequence[Any],
              grads: Sequence[np.ndarray], params: Sequence[np.ndarray],
              storage: Sequence[Tuple[Any, Any]]) -> List[np.ndarray]:
  """The update the peer applies from a state, in float64 (``p_new = p + update``).

  Args:
    hypers: one `PeerHyperparams` per params leaf.
    leaves: per params leaf ``(count, mu_product, m, v)``, e.g. `read_state`'s.
    grads: per params leaf the gradient.
    params: per params leaf the parameter value.
    storage: per params leaf the dtypes tx stores ``(m, v)`` in
      (`storage_dtypes`): the step is cut to NAdam's bound where tx cuts it.

  Returns:
    Per params leaf the float64 update.

  References:
    Dozat, 2016, "Incorporating Nesterov Momentum into Adam"; the PyTorch
    documentation of `torch.optim.NAdam`; Keras `keras.optimizers.Nadam`.
  """
  grads = _clip(hypers, [np.asarray(g, np.float64) for g in grads])
  out = []
  for h, (count, mu_product, m, v), g, p, dtypes in zip(hypers, leaves, grads, params, storage):
    p = np.asarray(p, np.float64)
    if h.maximize:
      g = -g
    if h.weight_decay and not h.decoupled_weight_decay:
      g = g + h.weight_decay * p
    t = count + 1
    mu_t = momentum_coefficient(h.b1, h.psi, t)
    mu_next = momentum_coefficient(h.b1, h.psi, t + 1)
    product = mu_product * mu_t
    m_t = h.b1 * np.asarray(m, np.float64) + (1.0 - h.b1) * g
    v_t = h.b2 * np.asarray(v, np.float64) + (1.0 - h.b2) * g * g
    denom = np.sqrt(v_t / (1.0 - h.b2 ** t)) + h.eps
    step = (1.0 - mu_t) / (1.0 - product) * g + mu_next / (1.0 - product * mu_next) * m_t
    ratio = np.where(denom > 0, step / np.where(denom > 0, denom, 1), 0)
    # The formulas' own bound on |m_bar / denominator| (`optax_nadam._bounds`), where tx
    # applies it (bfloat16 / float16 storage, a small eps): it only acts on states the
    # formulas cannot reach from zero moments, e.g. a float16 v flushed to 0 beside a
    # surviving m, or the probes' crafted ones.
    if _tx_cuts(h, dtypes):
      bound = _step_bound(h, t, mu_t, mu_next, product)
      ratio = np.clip(ratio, -bound, bound)
    update = -h.learning_rate * ratio
    if h.weight_decay and h.decoupled_weight_decay:
      update = update - h.learning_rate * h.weight_decay * p
    out.append(update)
  return out
