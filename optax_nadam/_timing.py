"""The one timing protocol of the demo and ``benchmarks/`` (private): contestants interleaved.

Timing one contestant's whole run, then the next one's, charges whichever runs
first for the machine warming up. Here each contestant takes one sample per
round, in orders that put each one in every position and after every other one
equally often (a balanced Latin square), and its times are summarised by
quantiles. `python -m optax_nadam` and ``benchmarks/`` (``run``, ``gpu``,
``guard_cost``) all time through `interleaved`.
"""

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np


def round_orders(n: int) -> list[tuple[int, ...]]:
  """One full cycle of the orders the contestants take their steps in.

  A balanced Latin square (Williams, 1949): the first order is
  ``0, 1, n-1, 2, n-2, ...``, the next ones add 1, 2, ... to it modulo `n`,
  and for odd `n` the reversed orders follow. Each block of `n` consecutive
  rounds from the start of the cycle is a Latin square (each contestant once in
  each position), and over the whole cycle (`n` rounds, `2n` for odd `n`)
  each contestant directly follows each other one equally often.

  Args:
    n: number of contestants, at least 1.

  Returns:
    ``n`` (even `n`, or 1) or ``2n`` (odd `n` > 1) tuples, each a permutation of ``range(n)``.

  References:
    Williams, 1949, "Experimental designs balanced for the estimation of
    residual effects of treatments", Australian Journal of Scientific Research.
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"round_orders: n must be an int >= 1 (contestants), got {n!r}")
  first = [0]
  for k in range(1, n):  # 1, n-1, 2, n-2, ...
    first.append((k + 1) // 2 if k % 2 else n - k // 2)
  orders = [tuple((x + shift) % n for x in first) for shift in range(n)]
  if n % 2 and n > 1:
    orders += [order[::-1] for order in orders]
  return orders


def schedule(n: int, rounds: int) -> list[tuple[int, ...]]:
  """The order of the contestants in each of `rounds` rounds.

  Args:
    n: number of contestants.
    rounds: number of rounds.

  Returns:
    ``rounds`` permutations of ``range(n)``: `round_orders` repeated. The
    number of times contestant ``i`` takes position ``p`` differs between
    contestants by at most one; by none when ``rounds`` is a multiple of ``n``.
  """
  cycle = round_orders(n)
  return [cycle[r % len(cycle)] for r in range(rounds)]


@dataclasses.dataclass(frozen=True)
class StepTimes:
  """Summary of one contestant's per-step wall times, in seconds.

  Attributes:
    median: the median step time.
    p10: the 10th percentile.
    p90: the 90th percentile.
    count: number of steps timed.
  """

  median: float
  p10: float
  p90: float
  count: int


def summarize(seconds: Sequence[float]) -> StepTimes:
  """Median and 10th/90th percentiles of step times.

  Args:
    seconds: the per-step wall times.

  Returns:
    A `StepTimes`.
  """
  s = np.asarray(seconds, np.float64)
  p10, median, p90 = np.percentile(s, [10, 50, 90])
  return StepTimes(float(median), float(p10), float(p90), int(s.size))


def interleaved(
    steps: Mapping[str, Callable[[int], Any]],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    wait: Callable[[Any], Any] = lambda x: x,
    before_round: Optional[Callable[[int], Any]] = None,
) -> tuple[dict[str, list], dict[str, np.ndarray]]:
  """Runs ``rounds`` rounds; in each, every contestant's step once, timed.

  Round ``r`` calls ``steps[name](r)`` for every contestant, in the order
  ``schedule(len(steps), rounds)[r]``; a step's time runs from its call until
  ``wait`` returns on its result (e.g. `jax.block_until_ready`), so that no
  step's work spills into the next one's time.

  Args:
    steps: contestant name -> step function of the round index.
    rounds: number of rounds.
    clock: the clock (seconds).
    wait: called on each step's result before the clock is read again.
    before_round: called with ``r`` before round ``r``, untimed (e.g. to put
      the round's batch on the device).

  Returns:
    ``(outputs, seconds)``: per contestant, the list of its steps' results and
    the array of its steps' wall times, both in round order.
  """
  names = list(steps)
  outputs = {name: [] for name in names}
  seconds = {name: np.zeros(rounds) for name in names}
  for r, order in enumerate(schedule(len(names), rounds)):
    if before_round is not None:
      before_round(r)
    for i in order:
      name = names[i]
      start = clock()
      out = wait(steps[name](r))
      seconds[name][r] = clock() - start
      outputs[name].append(out)
  return outputs, seconds
