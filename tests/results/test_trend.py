"""The golden trend after its minimum (`th_distill.results.trend`) against scipy's regression and a
hand computation of the autocorrelation adjustment."""

import numpy as np
import pytest
from scipy import stats

from th_distill.results import trend


def test_with_uncorrelated_residuals_the_interval_is_scipys_regression_interval():
  x = np.arange(10, dtype=float)
  y = np.array([0.0, 1.9, 2.1, 3.8, 4.2, 5.9, 6.1, 7.8, 8.2, 9.9])  # alternating residuals
  t = trend.ols_trend(x, y)
  reference = stats.linregress(x, y)
  assert t.autocorrelation == 0.0 and t.effective_points == 10  # r < 0 is taken as 0
  assert t.slope_pct_per_doubling == pytest.approx(reference.slope)
  half = stats.t.ppf(0.975, 8) * reference.stderr
  assert (t.low, t.high) == pytest.approx((reference.slope - half, reference.slope + half))


def test_correlated_residuals_widen_the_interval_by_the_effective_sample_size():
  x = np.arange(12, dtype=float)
  wave = np.array([1, 1, 1, -1, -1, -1, 1, 1, 1, -1, -1, -1], dtype=float) * 0.5
  y = 0.2 * x + wave
  t = trend.ols_trend(x, y)
  fit = stats.linregress(x, y)
  residual = y - fit.intercept - fit.slope * x
  curved = y - np.polyval(np.polyfit(x, y, 2), x)  # the autocorrelation, net of curvature
  r = curved[1:] @ curved[:-1] / (curved @ curved)
  effective = 12 * (1 - r) / (1 + r)
  stderr = np.sqrt(residual @ residual / (effective - 2) / np.sum((x - x.mean()) ** 2))
  assert t.autocorrelation == pytest.approx(r) and t.effective_points == pytest.approx(effective)
  assert t.high - t.slope_pct_per_doubling == pytest.approx(
    stats.t.ppf(0.975, effective - 2) * stderr
  )
  assert t.high - t.low > 2 * stats.t.ppf(0.975, 10) * fit.stderr  # wider than the naive one


def test_a_curved_rise_without_noise_is_rising():
  steps = np.unique(np.rint(np.geomspace(1, 3000, 45)))
  values = 1.5 + 2e-4 * np.maximum(steps - 200, 0) + 0.3 * np.exp(-steps / 50)  # linear in step
  t = trend.trend_after_minimum(steps, values)
  assert t.rising and t.slope_pct_per_doubling > 5


def test_the_trend_is_read_after_the_minimum_in_percent_per_doubling():
  steps = np.array([0, 100, 200, 400, 800, 1600, 3200])
  values = np.array([2.0, 1.0, 1.02, 1.04, 1.06, 1.08, 1.10])  # +2% of the minimum per doubling
  t = trend.trend_after_minimum(steps, values)
  assert t.points == 5 and t.slope_pct_per_doubling == pytest.approx(2.0)
  assert t.rising and not t.flat
  falling = trend.trend_after_minimum(steps, np.sort(values)[::-1])
  assert falling.points == 0 and not falling.rising and falling.flat  # minimum at the end


def test_too_few_points_give_no_trend():
  t = trend.trend_after_minimum([0, 1, 2, 3, 4], [1.0, 0.5, 0.6, 0.7, 0.8])
  assert t.points == 3 and t.slope_pct_per_doubling is None and not t.rising
  assert trend.trend_after_minimum([0, 1], [np.nan, np.nan]).points == 0
