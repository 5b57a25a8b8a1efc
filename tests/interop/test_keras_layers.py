"""Lining a ``.keras`` file's layer variables up with the optimizer's slots, and .h5 pairing.

`keras3_layers.line_up` must return the one assignment of saved variables to
slots that fits, refuse when there is none or more than one, and never recurse
per layer (a model of any depth). Checked against brute force on random
layers (hypothesis) and on a 5000-layer model.
"""

import itertools

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_nadam.interop import _files, params_from_keras
from optax_nadam.interop.keras import _keras3_layers as keras3_layers

SHAPES = [(2,), (3,), (2, 2)]


def _unit(name, shapes, fixed):
  return (name, fixed, [(str(i), np.zeros(s, np.float32)) for i, s in enumerate(shapes)])


def _brute_force(units, slots):
  """Every pairing that lines up with `slots`: a known layer's first `fixed` variables, a
  custom layer's (fixed None) any subsequence of its variables."""
  options = []
  for _, fixed, dss in units:
    if fixed is not None:
      options.append([tuple(range(fixed))] if fixed <= len(dss) else [])
    else:
      options.append([c for k in range(len(dss) + 1)
                      for c in itertools.combinations(range(len(dss)), k)])
  found = []
  for picks in itertools.product(*options):
    picked = [dss[i] for (_, _, dss), pick in zip(units, picks) for i in pick]
    if [tuple(d[1].shape) for d in picked] == slots:
      found.append([id(d[1]) for d in picked])
  return found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(SHAPES), max_size=3),
                          st.one_of(st.none(), st.integers(0, 3))), min_size=1, max_size=5),
       st.data())
def test_line_up_returns_the_only_assignment_or_refuses(layers, data):
  units = [_unit(f"l{i}", shapes, None if fixed is None else min(fixed, len(shapes)))
           for i, (shapes, fixed) in enumerate(layers)]
  # Slots: a true assignment (a custom layer's trainable variables: any subsequence)
  # or a random list.
  truth = [sorted(data.draw(st.sets(st.integers(0, len(dss) - 1))) if dss else [])
           if fixed is None else list(range(fixed)) for _, fixed, dss in units]
  slots = [tuple(dss[i][1].shape) for (_, _, dss), pick in zip(units, truth) for i in pick]
  if data.draw(st.booleans()):
    slots = data.draw(st.lists(st.sampled_from(SHAPES), max_size=6))
  found = _brute_force(units, slots)
  if len(found) == 1:
    picked = keras3_layers.line_up(units, slots, "f.keras")
    assert [id(d) for _, d in picked] == found[0]
  else:
    with pytest.raises(_files.FileFormatError,
                       match="more than one way" if found else "cannot be lined up"):
      keras3_layers.line_up(units, slots, "f.keras")


def _brute_force_any_order(units, slots):
  """The distinct pairings over every order of the layers (each layer contiguous)."""
  found = set()
  for order in itertools.permutations(range(len(units))):
    ordered = [units[u] for u in order]
    for pairing in _brute_force(ordered, slots):
      found.add(tuple(pairing))
  return found


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(SHAPES), max_size=2),
                          st.one_of(st.none(), st.integers(0, 2))), min_size=1, max_size=4),
       st.permutations(range(4)), st.data())
def test_any_order_line_up_pairs_only_when_shapes_prove_it(layers, order, data):
  units = [_unit(f"l{i}", shapes, None if fixed is None else min(fixed, len(shapes)))
           for i, (shapes, fixed) in enumerate(layers)]
  truth_order = [u for u in order if u < len(units)]
  truth = [sorted(data.draw(st.sets(st.integers(0, len(units[u][2]) - 1))))
           if units[u][1] is None and units[u][2] else list(range(units[u][1] or 0))
           for u in truth_order]
  slots = [tuple(units[u][2][i][1].shape) for u, pick in zip(truth_order, truth) for i in pick]
  found = _brute_force_any_order(units, slots)
  picked = keras3_layers.line_up_any_order(units, slots)
  if len(found) == 1:
    assert picked is not None and tuple(id(d) for _, d in picked) == next(iter(found))
  else:
    assert picked is None


def test_line_up_has_no_per_layer_recursion():
  units = [_unit(f"dense_{i}", [(2, 2), (2,)], 2) for i in range(5000)]
  slots = [(2, 2), (2,)] * 5000
  assert len(keras3_layers.line_up(units, slots, "deep.keras")) == 10000


def test_custom_layers_that_fit_two_ways_are_refused():
  # Two custom layers of (4,) variables, two (4,) slots: 2+0, 1+1 or 0+2 fit.
  units = [_unit("layers/a", [(4,), (4,)], None), _unit("layers/b", [(4,)], None)]
  with pytest.raises(_files.FileFormatError, match="f.keras: .* in more than one way.*"
                     r"resume_from_keras\(model, like\)"):
    keras3_layers.line_up(units, [(4,), (4,)], "f.keras")
  # The config saying the first layer's second variable is not trainable proves it.
  units[0] = _unit("layers/a", [(4,), (4,)], 1)
  assert [p for p, _ in keras3_layers.line_up(units, [(4,), (4,)], "f.keras")] == [
      "layers/a/0", "layers/b/0"]


def test_h5_with_two_weights_of_one_name_is_refused(tmp_path):
  # Nested models may name layers alike: the slots name their weight, which is then
  # ambiguous.
  path = tmp_path / "dup.h5"
  with h5py.File(path, "w") as f:
    g = f.create_group("model_weights")
    g.attrs["layer_names"] = [b"dense", b"inner"]
    for layer in ("dense", "inner"):
      sub = g.create_group(layer)
      sub.attrs["weight_names"] = [b"dense/kernel:0"]
      sub["dense/kernel:0"] = np.ones((2, 2), np.float32)
  with pytest.raises(ValueError, match=r"dup.h5: two of the model's weights are named "
                     r"'dense/kernel:0'.*not proven"):
    params_from_keras(path, [np.zeros((2, 2), np.float32)] * 2)
