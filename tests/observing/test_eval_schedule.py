"""The evaluation schedule is computed on demand: the same steps as listing them all, without a
structure the size of the run (a run of 10^12 steps is planned in microseconds)."""

import itertools
import tracemalloc

import numpy as np
import pytest

from th_distill.observing.eval_schedule import EvaluationSchedule


def _listed(total, every, log_points):
  """The schedule as a set of every step (the definition)."""
  steps = set(range(0, total + 1, every)) | {total}
  if log_points and total >= 1:
    steps |= {int(s) for s in np.rint(np.geomspace(1, total, log_points))}
  return sorted(steps)


@pytest.mark.parametrize(
  "total, every, log_points",
  list(itertools.product((0, 1, 6, 7, 100, 1001), (1, 3, 100), (0, 1, 5, 30))),
)
def test_the_schedule_matches_the_listed_steps(total, every, log_points):
  schedule, listed = EvaluationSchedule(total, every, log_points), _listed(total, every, log_points)
  assert list(schedule) == listed and len(schedule) == len(listed)
  for step in range(-1, total + 3):
    assert (step in schedule) == (step in listed)
    assert schedule.below(step) == sum(s < step for s in listed)
    assert list(schedule.upto(step)) == [s for s in listed if s <= step]


def test_a_huge_schedule_needs_no_memory():
  tracemalloc.start()
  schedule = EvaluationSchedule(10**12, 100, 30)
  count, inside, below = len(schedule), 10**12 - 100 in schedule, schedule.below(10**11)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert 10**10 < count <= 10**10 + 31
  assert inside and 10**12 - 1 not in schedule and below > 10**9
  assert peak < 1_000_000  # bytes


def test_invalid_schedules_are_refused():
  with pytest.raises(ValueError, match="every > 0"):
    EvaluationSchedule(10, 0)
