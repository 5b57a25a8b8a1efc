"""Writing our state into a live Keras Nadam (private to `optax_nadam.interop.keras`)."""

from typing import Any, Optional, Sequence

import numpy as np
import optax

from optax_nadam.interop._state import param_paths, read_state
from optax_nadam.interop.keras._live import (
  keras_kind,
  legacy_slot_vars,
  v3_slot_vars,
  value,
  var_name,
)


def state_to_keras(
    state: optax.OptState,
    params: optax.Params,
    optimizer: Any,
    *,
    var_list: Optional[Sequence[Any]] = None,
) -> None:
  """Writes our state into a Keras Nadam (tf-keras legacy or Keras 3).

  The optimizer's slots must exist: pass `var_list` (the model variables in
  the order of ``jax.tree.leaves(params)``) and they are created if needed;
  without it the optimizer must already be built and its variables are matched
  by the order it created them in. Hyperparameters are left as they are: build
  the optimizer like tx (Keras 3 follows tx only with ``momentum_decay=1.0``).

  Args:
    state: a state of a tx containing `scale_by_nadam`, for `params`.
    params: the params tree the state belongs to.
    optimizer: the Keras Nadam to write into (modified in place).
    var_list: optional model variables matching the params leaves.

  Returns:
    None.

  Raises:
    TypeError: not a supported Keras Nadam.
    ValueError: variable count or a shape differs (named), or the optimizer
      has no slots and no var_list was given.
  """
  kind = keras_kind(optimizer)
  values = read_state(state, params)
  paths = param_paths(params)
  n = len(values)
  if var_list is not None and len(var_list) != n:
    raise ValueError(f"var_list has {len(var_list)} variables but params has {n} leaves.")
  if kind == "legacy":
    if var_list is not None:
      optimizer._create_all_weights(list(var_list))
    if getattr(optimizer, "_m_cache", None) is None:
      raise ValueError("The legacy Nadam has no slots yet: pass var_list to create them.")
    pairs = legacy_slot_vars(optimizer, n, var_list)
    product_var = optimizer._m_cache
  else:
    if hasattr(optimizer, "_u_product_counter"):
      # tf_keras.optimizers.Nadam caches its product behind a Python counter
      # that a traced train step captures; its state cannot be set reliably.
      raise TypeError("state_to_keras writes tf-keras legacy and Keras 3 Nadam only.")
    if var_list is not None and not getattr(optimizer, "built", False):
      optimizer.build(list(var_list))
    if getattr(optimizer, "_u_product", None) is None:
      raise ValueError("The Keras Nadam is not built: pass var_list to build it.")
    pairs = v3_slot_vars(optimizer, n, var_list)
    product_var = optimizer._u_product
  counts = {c for c, _, _, _ in values}
  if len(counts) != 1:
    raise ValueError(f"The state holds several step counts {sorted(counts)}; Keras has one.")
  mu_products = {mp for _, mp, _, _ in values}
  for i, ((m_var, v_var), (_, _, m, v)) in enumerate(zip(pairs, values)):
    if tuple(m_var.shape) != m.shape:
      raise ValueError(
          f"Keras variable {i} ({var_name(m_var)}) has shape {tuple(m_var.shape)} but params "
          f"leaf {paths[i]} has {m.shape}."
      )
    m_var.assign(m.astype(np.dtype(value(m_var).dtype)))
    v_var.assign(v.astype(np.dtype(value(v_var).dtype)))
  optimizer.iterations.assign(counts.pop())
  product_var.assign(np.float32(mu_products.pop()))
