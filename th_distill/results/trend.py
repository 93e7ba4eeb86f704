"""The golden curve's trend after its minimum, with a confidence interval.

`golden_rise_pct` = 100 (final - min) / min is >= 0 by construction and grows with the noise of the
evaluations (the minimum of ~48 noisy values is biased low), so it cannot tell a flat curve from a
slow rise. The trend can: an ordinary least-squares line of the curve, in percent of its minimum,
against log2(step) over the evaluations *after* the minimum (the minimum itself is left out: it is
the selected low value), so the slope reads "percent per doubling of the steps". Consecutive
evaluations of one run share most of their parameters, so their noise is correlated; the interval
accounts for it as Santer et al. (2000, J. Geophys. Res. 105, 7337) do for temperature trends: with
r the lag-1 autocorrelation of the residuals (taken as 0 when negative), the n evaluations count as
n_eff = n (1 - r) / (1 + r) independent ones, the line's residual variance is divided by n_eff - 2
instead of n - 2, and the interval uses Student's t with n_eff - 2 degrees of freedom. A rise is
rarely a straight line in log step, and the line's residuals then carry its curvature, which would
read as autocorrelated noise and hide a clear rise; so r is measured on the residuals of a quadratic
in log2(step) (from QUADRATIC_POINTS evaluations on), while the variance stays the line's (the
conservative one). A curve is `rising` when the interval's lower end is above zero, `flat` when the
interval holds zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

# Evaluations after the minimum needed for a trend, and the fewest effective ones for an
# interval (fewer: no trend, never `rising`).
MIN_POINTS = 4
MIN_EFFECTIVE_POINTS = 3.0
# Evaluations from which the residuals' autocorrelation is read off a quadratic fit.
QUADRATIC_POINTS = 6


@dataclasses.dataclass(frozen=True)
class Trend:
  """`slope_pct_per_doubling` with its interval [`low`, `high`] at `level`, from `points`
  evaluations after the minimum whose residuals have lag-1 autocorrelation `autocorrelation`
  (`effective_points` = n (1 - r) / (1 + r)); None numbers when there were too few."""

  slope_pct_per_doubling: float | None
  low: float | None
  high: float | None
  points: int
  autocorrelation: float | None
  effective_points: float | None
  level: float

  @property
  def rising(self) -> bool:
    """The interval lies above zero: the curve rises after its minimum."""
    return self.low is not None and self.low > 0

  @property
  def flat(self) -> bool:
    """The interval holds zero (or there are too few points to say it rises or falls)."""
    return not self.rising and not (self.high is not None and self.high < 0)


def ols_trend(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> Trend:
  """The OLS slope of `y` [n] on `x` [n] with its autocorrelation-adjusted interval (module
  docstring); slope and interval are None when the effective points are too few."""
  n = len(x)
  if n < MIN_POINTS or np.ptp(x) == 0:
    return Trend(None, None, None, n, None, None, level)
  xc = x - x.mean()
  sxx = float(xc @ xc)
  slope = float(xc @ (y - y.mean())) / sxx
  residual = y - y.mean() - slope * xc
  scale = float(residual @ residual)
  noise = residual
  if n >= QUADRATIC_POINTS:
    noise = y - np.polyval(np.polyfit(x, y, 2), x)
  spread = float(noise @ noise)
  r = float(noise[1:] @ noise[:-1]) / spread if spread > 0 else 0.0
  r = min(max(r, 0.0), 1.0 - 1e-12)
  effective = n * (1.0 - r) / (1.0 + r)
  if effective < MIN_EFFECTIVE_POINTS:
    return Trend(None, None, None, n, r, effective, level)
  stderr = math.sqrt(scale / (effective - 2.0) / sxx)
  half = float(stats.t.ppf(0.5 + level / 2.0, effective - 2.0)) * stderr
  return Trend(slope, slope - half, slope + half, n, r, effective, level)


def trend_after_minimum(
  steps: Sequence[float], values: Sequence[float], level: float = 0.95
) -> Trend:
  """The trend of `values` [T] over `steps` [T] after their minimum (module docstring): the
  evaluations at steps > 0 strictly after the (first) minimum of the finite values, in percent
  of the minimum against log2(step)."""
  steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
  finite = np.isfinite(values)
  if not finite.any():
    return Trend(None, None, None, 0, None, None, level)
  best = int(np.nanargmin(np.where(finite, values, np.nan)))
  keep = (np.arange(len(values)) > best) & finite & (steps > 0)
  return ols_trend(np.log2(steps[keep]), 100.0 * values[keep] / values[best], level)
