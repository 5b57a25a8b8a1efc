"""A torch model's weights (and BatchNorm statistics) placed into a params tree.

`read_params` pairs the model state dict's entries with the leaves of `like`
(`optax_nadam.interop._pairing.match_model`), reads only the entries
that fill a leaf, applies the layout, and validates each (shape, dtype,
finite values). `trainable` splits off what the optimizer trains: not
``batch_stats`` (Linen) nor `nnx.BatchStat` variables.
"""

import sys
from typing import Any, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam.interop import _pairing as pairing
from optax_nadam.interop.torch._sources import Checkpoint


def _value(x: Any) -> Any:
  """The array of an `nnx.Variable`, or `x`."""
  get = getattr(x, "get_value", None)
  return get() if callable(get) else x


def as_param(value: Any, like: Any, where: str) -> jax.Array:
  """A validated copy of one weight, cast to `like`'s dtype and placement."""
  like = _value(like)
  if np.shape(value) != np.shape(like):
    raise ValueError(f"{where} has shape {np.shape(value)} (after the layout); the params "
                     f"leaf has {tuple(np.shape(like))}.")
  kind = lambda d: "f" if jnp.issubdtype(d, jnp.floating) else (  # noqa: E731
      "c" if jnp.issubdtype(d, jnp.complexfloating) else "i")
  if kind(value.dtype) != kind(jnp.asarray(like).dtype) or kind(value.dtype) == "c":
    raise ValueError(f"{where} has dtype {value.dtype}; the params leaf has "
                     f"{jnp.asarray(like).dtype}.")
  cast = np.asarray(value).astype(jnp.asarray(like).dtype)
  finite_check = cast if cast.dtype == np.float64 else cast.astype(np.float32)  # bf16: no isfinite
  if kind(value.dtype) == "f" and not np.all(np.isfinite(finite_check)):
    raise ValueError(f"{where} holds NaN or Inf (after casting to {cast.dtype}).")
  sharding = getattr(like, "sharding", None)
  return jax.device_put(cast, sharding) if sharding is not None else jnp.asarray(cast)


def trainable(like: Any) -> Tuple[Any, List[int]]:
  """``(the tree the optimizer trains, its leaves' indices among like's leaves)``."""
  stats = pairing.like_leaves(like).stats
  kept = [i for i, s in enumerate(stats) if not s]
  if not any(stats):
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(like, nnx.State):
      return nnx.as_pure(like), kept
    return like, kept
  if isinstance(like, dict) and "batch_stats" in like:
    rest = {k: v for k, v in like.items() if k != "batch_stats"}
    return (rest["params"] if set(rest) == {"params"} else rest), kept
  nnx = sys.modules["flax.nnx"]
  return nnx.as_pure(nnx.filter_state(like, nnx.Not(nnx.BatchStat))), kept


def read_params(ck: Checkpoint, like: Any, layout: Any) -> Tuple[Any, List[Optional[int]]]:
  """``(like filled with the model's weights, the leaf index of each model entry)``."""
  if ck.model is None:
    raise ValueError(ck.model_error or f"{ck.model_where} holds no model state dict (name -> "
                     "tensor); the weights are needed too.")
  names = list(ck.model)
  entries = list(ck.model.values())
  target = pairing.match_model(names, [e.shape for e in entries], [e.tie for e in entries],
                               ck.ordered, like, layout, ck.model_where)
  nnx = sys.modules.get("flax.nnx")
  is_var = (lambda x: isinstance(x, nnx.Variable)) if nnx is not None else None
  leaves, treedef = jax.tree.flatten(like, is_leaf=is_var)
  paths = pairing.like_leaves(like).paths
  out: List[Any] = list(leaves)
  for name, e, i in zip(names, entries, target):
    if i is None:
      continue
    if tuple(np.shape(_value(leaves[i]))) != pairing.laid_out_shape(layout, paths[i], e.shape):
      raise ValueError(f"{ck.model_where}: {name} (params leaf {paths[i]}) has shape "
                       f"{e.shape} (before the layout), which does not fit the leaf's "
                       f"{tuple(np.shape(_value(leaves[i])))}.")
    a = e.read()
    value = np.asarray(layout(paths[i], a)) if layout is not None else a
    x = as_param(value, leaves[i], f"{ck.model_where}: {name} (params leaf {paths[i]})")
    out[i] = leaves[i].replace(x) if is_var and is_var(leaves[i]) else x
  return jax.tree.unflatten(treedef, out), target
