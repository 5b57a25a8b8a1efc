"""The one place a moment or weight meets a parameter: by names, a proven order, or shapes.

Every import and export (torch and Keras) pairs a peer's items (a model's
weights, an optimizer's slots) with the leaves of a params tree here, and only
by a proof:

1. names: the model's, the optimizer's (torch's ``param_names``, DCP's
   parameter FQN keys), the caller's (``param_names=``);
2. an order the source proves: a state dict made by ``module.state_dict()``
   (torch keeps its ``_metadata`` on it) is in registration order, which is
   ``model.parameters()``'s; one torch param group saved without names is
   taken to be ``NAdam(model.parameters())`` (the one assumption, documented);
   a params tree without dicts (lists, tuples) is in the caller's order;
3. shapes that leave exactly one assignment.

Anything else is a ValueError saying what to pass. ``jax.tree.leaves`` of a
dict sorts its keys: that order proves nothing and is never used.

Names are compared in a canonical form, the same for both sides: wrapper
prefixes shared by every key (DDP's ``module.``, a Lightning module's
attribute) and ``_orig_mod`` (torch.compile) are dropped, ``.`` becomes ``/``,
Flax's ``layers_3`` / ``layers/3`` (``nn.Sequential``) become ``3``, NNX's
``value`` and Linen's ``params`` / ``batch_stats`` collections are dropped.
BatchNorm's ``running_mean`` / ``running_var`` fill the leaves Flax calls
``mean`` / ``var`` in ``batch_stats`` (Linen) or `nnx.BatchStat` variables.
"""

import collections
import re
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from optax_nadam import _tree

_STATS = {"running_mean": "mean", "running_var": "var"}
_NEVER = ("num_batches_tracked",)


class LikeLeaves(NamedTuple):
  """The leaves of a params tree as pairing sees them (`like_leaves`)."""

  paths: List[str]  # keystr per leaf (jax.tree.leaves order)
  names: List[str]  # canonical names
  stats: List[bool]  # batch statistics (not trained)
  shapes: List[Tuple[int, ...]]
  ordered: bool  # no dict on any path: jax.tree.leaves is the caller's own order


def callers_order(like: Any) -> bool:
  """True when `like`'s leaf order is the caller's: no dict (sorted keys) on any path."""
  nnx = sys.modules.get("flax.nnx")
  is_var = (lambda x: isinstance(x, nnx.Variable)) if nnx is not None else None
  flat = jax.tree_util.tree_flatten_with_path(like, is_leaf=is_var)[0]
  ordered_keys = (jax.tree_util.SequenceKey, jax.tree_util.GetAttrKey)
  return all(isinstance(k, ordered_keys) for path, _ in flat for k in path)


def _canon(parts: Sequence[str]) -> str:
  out = []
  for p in parts:
    m = re.fullmatch(r"layers_(\d+)", p)
    if m:
      p = m.group(1)
    if p.isdigit() and out and out[-1] == "layers":
      out.pop()
    out.append(p)
  return "/".join(out)


def like_leaves(like: Any) -> LikeLeaves:
  """The leaves of `like` with canonical names; which are batch statistics."""
  nnx = sys.modules.get("flax.nnx")
  is_var = (lambda x: isinstance(x, nnx.Variable)) if nnx is not None else None
  flat = jax.tree_util.tree_flatten_with_path(like, is_leaf=is_var)[0]
  paths, names, stats, shapes = [], [], [], []
  for path, leaf in flat:
    get = getattr(leaf, "get_value", None)
    shapes.append(tuple(np.shape(get() if callable(get) else leaf)))
    parts = [_tree._key_name(k) for k in path]
    while parts and parts[-1] == "value":
      parts.pop()
    stat = bool(nnx is not None and isinstance(leaf, nnx.BatchStat))
    if parts and parts[0] in ("params", "batch_stats") and isinstance(like, dict):
      stat = stat or parts[0] == "batch_stats"
      parts = parts[1:]
    paths.append(_tree.path_str(path) + (".value" if is_var and is_var(leaf) else ""))
    names.append(_canon(parts))
    stats.append(stat)
  return LikeLeaves(paths, names, stats, shapes, callers_order(like))


def strip_prefixes(names: Sequence[str], like: LikeLeaves) -> List[str]:
  """`names` without ``_orig_mod`` parts and without first parts shared by all of them."""
  names = [".".join(p for p in n.split(".") if p != "_orig_mod") for n in names]
  tops = {n.split("/")[0] for n in like.names}
  while names and all("." in n for n in names):
    first = {n.split(".")[0] for n in names}
    if len(first) != 1 or _canon([next(iter(first))]) in tops:
      break
    names = [n.split(".", 1)[1] for n in names]
  return names


def torch_name(name: str, shape: Tuple[int, ...], layout: Any) -> Tuple[Optional[str], bool]:
  """``(canonical name or None to skip, is a batch statistic)`` of a torch key."""
  *scope, last = name.split(".")
  if last in _NEVER:
    return None, False
  if last in _STATS:
    return _canon([*scope, _STATS[last]]), True
  if callable(getattr(layout, "leaf_name", None)):
    leaf = layout.leaf_name(name, tuple(shape))
    return (None if leaf is None else _canon(leaf.split("/"))), False
  return _canon(name.split(".")), False


def _by_name(names, shapes, like: LikeLeaves, layout, where, ties) -> Optional[List[Optional[int]]]:
  """Per entry the leaf it fills by name (None: skipped), or None if names do not apply."""
  index: Dict[str, int] = {}
  for i, n in enumerate(like.names):
    if n in index:
      raise ValueError(f"params leaves {like.paths[index[n]]} and {like.paths[i]} have the same "
                       f"name {n!r} once wrappers are dropped; pass a tree with distinct names.")
    index[n] = i
  stripped = strip_prefixes(names, like)
  canon = [torch_name(n, sh, layout) for n, sh in zip(stripped, shapes)]
  out: List[Optional[int]] = [None if c is None else index.get(c) for c, _ in canon]
  if not callable(getattr(layout, "leaf_name", None)) and all(i is None for i in out):
    return None  # no name fits: like's names are not the model's (e.g. a list)
  tied = {ties[k] for k, i in enumerate(out) if i is not None and ties[k] is not None}
  # Left out: statistics when like has none; a tensor tied to one that fills a leaf.
  rest = [f"{n} -> {c}" for n, (c, stat), i, t in zip(names, canon, out, ties)
          if c is not None and i is None and not (stat and not any(like.stats))
          and not (t is not None and t in tied)]
  if rest:
    raise ValueError(
        f"{where}: entries {rest[:5]} name no params leaf (params leaves: "
        f"{like.names[:8]}{' ...' if len(like.names) > 8 else ''}); pass a layout that "
        "names them (interop.TorchToFlax(rename={...})) or a like tree with these names "
        "(frozen parameters too: they are filled, and the resumed tx leaves them unchanged).")
  filled = collections.Counter(i for i in out if i is not None)
  missing = [p for i, p in enumerate(like.paths) if i not in filled]
  twice = sorted(like.paths[i] for i, c in filled.items() if c > 1)
  if missing or twice:
    raise ValueError(f"{where}: params leaves {missing[:5]} are filled by no entry"
                     f"{' and ' + str(twice) + ' by several' if twice else ''}.")
  return out


def param_entries(names: Sequence[str], ties: Sequence[Any]) -> List[int]:
  """Indices of the entries ``model.parameters()`` yields: no statistics, no tie repeats."""
  seen, out = set(), []
  for k, (n, t) in enumerate(zip(names, ties)):
    last = n.split(".")[-1]
    if last in _NEVER or last in _STATS or (t is not None and t in seen):
      continue
    seen.add(t)
    out.append(k)
  return out


def match_model(names: Sequence[str], shapes: Sequence[Tuple[int, ...]], ties: Sequence[Any],
                ordered: bool, like: Any, layout: Any, where: str) -> List[Optional[int]]:
  """For each model entry the index of the `like` leaf it fills (None: not a leaf).

  By name when the names apply; else by registration order when `ordered`
  (the dict is ``module.state_dict()``'s) and `like` is in the caller's order
  (a list in ``model.parameters()`` order); else by shapes; else refused.
  """
  leaves = like_leaves(like)
  out = _by_name(list(names), shapes, leaves, layout, where, list(ties))
  if out is not None:
    return out
  params = param_entries(names, ties)
  listed = [names[k] for k in params][:4]
  if len(params) != len(leaves.paths):
    raise ValueError(
        f"{where} has {len(params)} parameter entries ({listed}...) but params has "
        f"{len(leaves.paths)} leaves ({leaves.paths[:4]}...); each entry fills one leaf (pass "
        "layout=interop.torch_to_flax, or a like tree keyed by the model's names, to match "
        "by name).")
  if ordered and leaves.ordered:
    out = [None] * len(names)
    for i, k in enumerate(params):
      out[k] = i
    return out
  target = unique_shapes([shapes[k] for k in params], leaves, range(len(leaves.paths)), layout)
  if target is None:
    why = ("like is a dict, whose leaves jax orders by sorted key, not by the model"
           if ordered else "its names are not in the model's order (not a "
           "module.state_dict(): safetensors and index files sort them)")
    raise ValueError(
        f"{where}: like's leaf names ({leaves.names[:4]}...) are not the model's "
        f"({listed}...), {why}, and shapes leave no single assignment: pass "
        "layout=interop.torch_to_flax (Flax names) or a like tree keyed by the model's names.")
  out = [None] * len(names)
  for k, i in zip(params, target):
    out[k] = i
  return out


_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)


def laid_out_shape(layout: Any, path: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The shape an array of `shape` has after `layout`, without allocating it.

  A layout that permutes axes (transposes) is probed on a tiny array whose
  axes have distinct sizes; any other layout is called on a zero-stride view.
  """
  shape = tuple(int(n) for n in shape)
  if layout is None:
    return shape
  if len(shape) <= len(_PRIMES):
    probe = _PRIMES[:len(shape)]
    out = tuple(np.shape(layout(path, np.zeros(probe, np.float32))))
    if sorted(out) == sorted(probe):
      return tuple(shape[probe.index(n)] for n in out)
  return tuple(np.shape(layout(path, np.broadcast_to(np.float32(0), shape))))


def unique_shapes(shapes: Sequence[Optional[Tuple[int, ...]]], leaves: LikeLeaves,
                  candidates: Sequence[int], layout: Any) -> Optional[List[int]]:
  """The one assignment of items (by shape, before the layout) to candidate leaves, or None.

  Each item must fit exactly one candidate and no two items the same one; an
  item of unknown shape (None) fits nothing.
  """
  candidates = list(candidates)
  if None in shapes or len(shapes) > len(candidates):
    return None
  options = [[i for i in candidates
              if laid_out_shape(layout, leaves.paths[i], s) == leaves.shapes[i]]
             for s in shapes]
  if any(len(o) != 1 for o in options) or len({o[0] for o in options}) != len(options):
    return None
  return [o[0] for o in options]


def equal_shapes(shapes: Sequence[Optional[Tuple[int, ...]]], what: str) -> str:
  """`` and equal shapes ...`` naming the items that share a shape, or ""."""
  equal = {s: [i for i, t in enumerate(shapes) if t == s] for s in shapes if s is not None}
  equal = {s: ix for s, ix in equal.items() if len(ix) > 1}
  if not equal:
    return ""
  return (" and equal shapes leave more than one assignment (" + "; ".join(
      f"{s} at {what} {ix[:6]}" for s, ix in list(equal.items())[:3]) + ")")


def pair(by_name: Optional[Sequence[Optional[int]]], proven: Optional[Sequence[int]],
         shapes: Sequence[Optional[Tuple[int, ...]]], leaves: LikeLeaves,
         candidates: Sequence[int], layout: Any, refusal: Callable[[], str]) -> List[int]:
  """Per item the params leaf it meets, by the first proof that holds; else a ValueError.

  Args:
    by_name: per item the leaf its name gives (all named), or None when the
      items have no names that apply.
    proven: per item the leaf of an order the source proves (a torch-made
      state dict, a known sublayer order, a list tree in the caller's order),
      or None.
    shapes: per item its shape before the layout (None: unknown).
    leaves: `like_leaves` of the params tree.
    candidates: the leaves an item may meet (e.g. not batch statistics, not
      leaves our state does not hold), in leaf order.
    layout: the layout applied to the items (shapes compared after it).
    refusal: the message when nothing proves the pairing (say what to pass).

  Returns:
    Distinct leaf indices, one per item.
  """
  out = by_name if by_name is not None else proven
  if out is None:
    out = unique_shapes(shapes, leaves, candidates, layout)
  if out is None:
    raise ValueError(refusal())
  twice = sorted({leaves.paths[i] for i in out if list(out).count(i) > 1})
  if twice:
    raise ValueError(f"params leaves {twice[:5]} would each meet several of the peer's "
                     "parameters.")
  return list(out)
