"""Which steps of a run are evaluated: every `every` steps, plus log-spaced early steps.

Convergence laws (`th_distill.detection`) are fitted in log time, so a curve evaluated only every
100 steps has almost no points where it falls fastest. `log_points` adds that many steps spaced
evenly in log(step) over [1, total]; they are rounded and merged with the regular ones.

`EvaluationSchedule` answers membership, counts and iteration arithmetically: it never holds a
structure the size of `total` (only the `log_points` log-spaced steps), so a run of any length
can be planned and checked without the schedule filling the memory.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import heapq
import itertools
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvaluationSchedule:
  """The sorted steps in [0, total] to evaluate: 0, the multiples of `every`, `total` itself,
  and `log_points` steps log-spaced over [1, total] (fewer when rounding merges them)."""

  total: int
  every: int
  log_points: int = 0

  def __post_init__(self):
    if self.total < 0 or self.every <= 0 or self.log_points < 0:
      raise ValueError(
        f"Need total >= 0, every > 0, log_points >= 0; got {self.total}, {self.every}, "
        f"{self.log_points}."
      )

  @functools.cached_property
  def _extra(self) -> tuple[int, ...]:
    """The log-spaced steps that are not regular ones (multiples of `every`, or `total`)."""
    if not self.log_points or self.total < 1:
      return ()
    steps = {int(s) for s in np.rint(np.geomspace(1, self.total, self.log_points))}
    return tuple(sorted(s for s in steps if s % self.every and s != self.total))

  @property
  def _ends_off_grid(self) -> bool:
    return self.total % self.every != 0

  def __contains__(self, step: object) -> bool:
    if not isinstance(step, (int, np.integer)) or not 0 <= step <= self.total:
      return False
    return step % self.every == 0 or step == self.total or step in self._extra

  def __len__(self) -> int:
    return self.total // self.every + 1 + self._ends_off_grid + len(self._extra)

  def __iter__(self) -> Iterator[int]:
    regular = range(0, self.total + 1, self.every)
    return heapq.merge(regular, self._extra, [self.total] if self._ends_off_grid else [])

  def below(self, step: int) -> int:
    """How many evaluation steps are < `step`."""
    if step <= 0:
      return 0
    last = min(step - 1, self.total)
    return (
      last // self.every
      + 1
      + (self._ends_off_grid and self.total < step)
      + bisect.bisect_left(self._extra, step)
    )

  def upto(self, last: int) -> Iterator[int]:
    """The evaluation steps <= `last`, in order."""
    return itertools.takewhile(lambda s: s <= last, iter(self))
