"""The rules the detector must beat (`detection.baselines`) and the exact binomial interval."""

import numpy as np
import pytest
from scipy import stats

from th_distill import detection
from th_distill.detection.baselines import DetectorMethod, FixedFraction, clopper_pearson


@pytest.mark.parametrize("k, n", [(0, 10), (5, 5), (3, 7), (1, 1), (9, 20)])
def test_clopper_pearson_bounds_leave_two_and_a_half_percent_in_each_binomial_tail(k, n):
  low, high = clopper_pearson(k, n)
  assert 0 <= low <= k / n <= high <= 1
  if k > 0:  # P(X >= k | low) = 0.025
    assert stats.binom.sf(k - 1, n, low) == pytest.approx(0.025, abs=1e-9)
  else:
    assert low == 0
  if k < n:  # P(X <= k | high) = 0.025
    assert stats.binom.cdf(k, n, high) == pytest.approx(0.025, abs=1e-9)
  else:
    assert high == 1
  assert clopper_pearson(5, 5)[0] == pytest.approx(0.4782, abs=1e-4)  # the 5/5
  assert np.isnan(clopper_pearson(0, 0)[0])


def test_fixed_fraction_keeps_the_last_evaluation_at_or_before_its_fraction():
  steps = np.array([0, 1, 2, 4, 8, 100, 200, 300, 400])
  decision = FixedFraction(0.33).decide(steps, np.ones(len(steps)))
  assert decision.fired and decision.kept_step == decision.step == 100  # 0.33 * 400 = 132
  assert FixedFraction(0.25).decide(steps, np.ones(len(steps))).kept_step == 100
  assert FixedFraction(1.0).decide(steps, np.ones(len(steps))).kept_step == 400


def test_rollback_keeps_the_evaluation_at_the_firing_step_over_w():
  steps = np.arange(0, 2001, 100.0)
  steps[0] = 1
  values = np.where(steps < 1000, 1.0 / np.sqrt(steps), 1.0 / np.sqrt(1000) * (1 + steps / 1e4))
  settings = detection.DetectorSettings(rule="early_stopping", noise_floor=0.0, patience=1)
  own = DetectorMethod(settings).decide(steps, values)
  rolled = DetectorMethod(settings, rollback=3.0).decide(steps, values)
  assert own.fired and rolled.fired and own.step == rolled.step == 1000
  assert own.kept_step == 900  # the running minimum
  assert rolled.kept_step == 300  # 1000 / 3 = 333.3
  assert DetectorMethod(settings, rollback=3.0).describe().endswith("kept at firing step / 3")
  assert not DetectorMethod(settings).decide(steps, 1.0 / steps).fired
