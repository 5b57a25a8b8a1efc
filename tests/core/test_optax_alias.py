"""optax's own generic optimizer tests, unmodified, against `optax_nadam.nadam` / `nadamw`.

optax ships `optax/_src/alias_test.py` in its wheel. Each of its `AliasTest`
cases that names `nadam` or `nadamw` runs with optax's aliases replaced by ours;
`test_explicit_dtype` (written for `adam` / `adamw` and `sgd`) runs its `adam` and
`adamw` cases with ours in their place: optax's `mu_dtype` contract. The one
adaptation is the state field's name: optax reads ``mu``, ours is ``m``, so
`optax.tree.get` is given ``m`` when asked for ``mu`` in a `ScaleByNadamState`.
"""

import re
import unittest

import optax
import pytest
from optax._src import alias as optax_alias
from optax._src import alias_test as optax_alias_test

import optax_nadam

pytestmark = pytest.mark.peers  # absl and scikit-learn (optax's test imports)

_OURS = {"nadam": optax_nadam.nadam, "nadamw": optax_nadam.nadamw}
_SLOW = ("test_optimization",)  # 10000 steps per case


def _cases():
  suite = unittest.defaultTestLoader.loadTestsFromTestCase(optax_alias_test.AliasTest)
  out = []
  for case in suite:
    text = str(case)
    name = case._testMethodName
    opt = re.search(r"opt_name='([a-z_0-9]+)'", text)
    if opt is None:
      continue
    if name.startswith("test_explicit_dtype"):
      if opt[1] in ("adam", "adamw"):
        out.append((f"{name}[{opt[1]} -> n{opt[1]}]", case))
    elif opt[1] in _OURS:
      slow = any(name.startswith(s) for s in _SLOW)
      out.append(pytest.param(text.split(" (optax")[0], case,
                              marks=[pytest.mark.slow] if slow else []))
  return out


@pytest.fixture
def ours_in_optax(monkeypatch):
  monkeypatch.setattr(optax_alias, "nadam", optax_nadam.nadam)
  monkeypatch.setattr(optax_alias, "nadamw", optax_nadam.nadamw)
  monkeypatch.setattr(optax_alias, "adam", optax_nadam.nadam)
  monkeypatch.setattr(optax_alias, "adamw", optax_nadam.nadamw)
  get = optax.tree.get

  def get_m_for_mu(tree, key, *args, **kwargs):
    if key == "mu":
      key = "m"
    return get(tree, key, *args, **kwargs)

  monkeypatch.setattr(optax.tree, "get", get_m_for_mu)


def test_the_cases_are_found():
  names = [c[0] if isinstance(c, tuple) else c.values[0] for c in _cases()]
  # 16 dtype pairs x (adam, adamw); nadam and nadamw in each of the other 7 tests.
  assert sum("explicit_dtype" in n for n in names) == 32
  assert sum("explicit_dtype" not in n for n in names) >= 14


@pytest.mark.parametrize("name,case", _cases())
def test_optax_alias_test_case(name, case, ours_in_optax):
  result = unittest.TestResult()
  case.run(result)
  problems = result.errors + result.failures
  assert not problems, "\n".join(p[1] for p in problems)
  assert result.testsRun == 1
