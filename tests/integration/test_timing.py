"""The timing protocol (`optax_nadam._timing`) of the demo and the benchmarks: balanced orders."""

import itertools

import numpy as np
import pytest

from optax_nadam import _timing as timing

# Runs at the declared dependency floors too (.ci/run); see pyproject's markers.
pytestmark = pytest.mark.core


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 9, 10, 12])
def test_round_orders_balance_positions_and_predecessors(n):
  orders = timing.round_orders(n)
  assert len(orders) == (2 * n if n % 2 and n > 1 else n)
  assert all(sorted(order) == list(range(n)) for order in orders)
  assert len(set(orders)) == len(orders)
  for start in range(0, len(orders), n):  # every block of n rounds: a Latin square
    block = np.array(orders[start:start + n])
    for position in range(n):
      assert sorted(block[:, position]) == list(range(n))
  # Over the cycle, contestant j directly follows contestant i equally often for every i != j.
  follows = {}
  for order in orders:
    for i, j in zip(order, order[1:]):
      follows[i, j] = follows.get((i, j), 0) + 1
  if n > 1:
    assert len(follows) == n * (n - 1)
    assert len(set(follows.values())) == 1, follows


@pytest.mark.parametrize("rounds", [1, 2, 599, 600])
def test_schedule_positions_differ_by_at_most_one(rounds):
  counts = np.zeros((3, 3), int)  # [contestant, position]
  for order in timing.schedule(3, rounds):
    for position, i in enumerate(order):
      counts[i, position] += 1
  assert counts.sum() == 3 * rounds
  for position in range(3):
    assert counts[:, position].max() - counts[:, position].min() <= 1
  if rounds % 3 == 0:
    assert (counts == rounds // 3).all()


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_round_orders_refuses_a_contestant_count_out_of_range(n):
  with pytest.raises(ValueError, match="int >= 1"):
    timing.round_orders(n)


class _FakeClock:
  """A clock that a step moves forward by its cost; the first step of a round pays a penalty."""

  def __init__(self, penalty):
    self.now, self.penalty, self.round = 0.0, penalty, None

  def __call__(self):
    return self.now

  def step(self, cost):
    def run(r):
      self.now += cost + (self.penalty if r != self.round else 0.0)
      self.round = r
      return r
    return run


def _medians(costs, penalty=10.0, rounds=600):
  clock = _FakeClock(penalty)
  steps = {name: clock.step(cost) for name, cost in costs.items()}
  outputs, seconds = timing.interleaved(steps, rounds, clock=clock)
  for name in costs:
    assert outputs[name] == list(range(rounds))
    assert seconds[name].shape == (rounds,)
  return {name: timing.summarize(s).median for name, s in seconds.items()}


def test_first_in_round_penalty_reaches_no_median_whatever_the_listing_order():
  costs = {"ours": 1.0, "theirs": 2.0, "adam": 3.0}
  for names in itertools.permutations(costs):
    assert _medians({name: costs[name] for name in names}) == costs
  # The benchmarks' nine contestants: the penalty is paid in 1/9 of the rounds each.
  nine = {f"c{i}": float(i + 1) for i in range(9)}
  assert _medians(nine, rounds=90) == nine


def test_the_fake_clock_does_catch_a_fixed_order(monkeypatch):
  # The check above can fail: with the order fixed, the first listed pays the penalty every round.
  monkeypatch.setattr(timing, "schedule", lambda n, rounds: [tuple(range(n))] * rounds)
  assert _medians({"ours": 1.0, "theirs": 1.0}) == {"ours": 11.0, "theirs": 1.0}


def test_interleaved_waits_on_each_result_and_prepares_each_round_untimed():
  events = []
  ticks = iter(range(1000))
  outputs, seconds = timing.interleaved(
      {"a": lambda r: ("a", r), "b": lambda r: ("b", r)}, 4,
      clock=lambda: next(ticks),
      wait=lambda out: events.append(("wait", out)) or out,
      before_round=lambda r: events.append(("round", r)),
  )
  assert outputs == {"a": [("a", r) for r in range(4)], "b": [("b", r) for r in range(4)]}
  assert [e for e in events if e[0] == "round"] == [("round", r) for r in range(4)]
  assert len([e for e in events if e[0] == "wait"]) == 8
  # One tick per clock read: every step is timed as exactly one tick, the round's setup not at all.
  np.testing.assert_array_equal(seconds["a"], 1.0)
  np.testing.assert_array_equal(seconds["b"], 1.0)


def test_summarize_is_quantiles():
  t = timing.summarize([5.0, 1.0, 2.0, 3.0, 4.0, 100.0])
  assert t.count == 6
  assert t.median == 3.5
  assert t.p10 == pytest.approx(1.5)
  assert t.p90 == pytest.approx(52.5)
