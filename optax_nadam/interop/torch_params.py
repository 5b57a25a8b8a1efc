"""A torch model's weights (state dict, module or `torch.save` file) as a params tree."""

import sys
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam.interop import layout as _layout
from optax_nadam.interop import torch_files
from optax_nadam.interop.state_nodes import param_paths


def _as_param(value: Any, like: Any, where: str) -> jax.Array:
  """A validated copy of one weight, cast to `like`'s dtype and placement."""
  if np.shape(value) != np.shape(like):
    raise ValueError(f"{where} has shape {np.shape(value)} (after the layout); the params "
                     f"leaf has {tuple(np.shape(like))}.")
  kind = lambda d: "f" if jnp.issubdtype(d, jnp.floating) else (  # noqa: E731
      "c" if jnp.issubdtype(d, jnp.complexfloating) else "i")
  if kind(value.dtype) != kind(jnp.asarray(like).dtype) or kind(value.dtype) == "c":
    raise ValueError(f"{where} has dtype {value.dtype}; the params leaf has "
                     f"{jnp.asarray(like).dtype}.")
  cast = np.asarray(value).astype(jnp.asarray(like).dtype)
  if kind(value.dtype) == "f" and not np.all(np.isfinite(cast.astype(np.float32))):
    raise ValueError(f"{where} holds NaN or Inf (after casting to {cast.dtype}).")
  sharding = getattr(like, "sharding", None)
  return jax.device_put(cast, sharding) if sharding is not None else jnp.asarray(cast)


def params_from_torch(
    source: Any,
    like: optax.Params,
    *,
    key: Optional[str] = None,
    layout: Optional[_layout.Layout] = None,
) -> optax.Params:
  """The weights of a torch model (state dict or checkpoint file) as a params tree.

  Matching is strict: by order (the state dict's i-th entry is
  ``jax.tree.leaves(like)[i]``), or by name when `layout` has a
  ``leaf_name`` method (`torch_to_flax`: ``fc1.weight`` -> ``['fc1']['kernel']``,
  batch-norm running statistics left out). Each weight goes through
  `layout`, then its shape must be the leaf's, its dtype castable to the
  leaf's (floating to floating) and its values finite.

  Args:
    source: a model ``state_dict()`` (name -> tensor, in its order), an
      ``nn.Module``, a checkpoint dict holding the state dict under ``model``
      / ``model_state_dict`` / ``state_dict`` (or `key`), or the path of a
      file `torch.save` wrote (read with ``weights_only=True`` on CPU).
    like: a params tree with the wanted structure, shapes and dtypes (e.g.
      the freshly initialized model's, ``nnx.state(model, nnx.Param)``).
    key: the checkpoint entry holding the model state dict.
    layout: ``(params_leaf_path, array) -> array`` applied to every weight
      (`torch_linear_to_flax`, `torch_to_flax`).

  Returns:
    A tree shaped like `like` holding copies of torch's weights.

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ValueError: an unreadable or unsafe file, no model state dict, a count,
      name, shape, dtype or value that does not fit. Messages name the file,
      the torch key (e.g. ``fc1.weight``) and the params leaf path.
  """
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(source, torch.nn.Module):
    source = source.state_dict()
  obj, name = torch_files.open_source(source)
  model, where = torch_files.model_dict(obj, key, name)
  names = list(model)
  arrays = [torch_files.to_numpy(model[n], f"{where}[{n!r}]") for n in names]
  target = _layout.match(names, [a.shape for a in arrays], like, layout, where)
  leaves, treedef = jax.tree.flatten(like)
  paths = param_paths(like)
  out: List[Any] = [None] * len(leaves)
  for n, a, i in zip(names, arrays, target):
    if i is None:
      continue
    value = np.asarray(layout(paths[i], a)) if layout is not None else a
    out[i] = _as_param(value, leaves[i], f"{where}: {n} (params leaf {paths[i]})")
  return jax.tree.unflatten(treedef, out)
