"""The detector's rules: how one evaluation of a curve is scored from the evaluations up to it.

Each rule (`DetectorSettings.rule`) scores the last evaluation at step t of a curve (steps,
values), both [E] in increasing step order:
- `slowdown` (default): the log-log slope b of the curve over [t / window, t] against its slope
  over [t / window^2, t / window); the evaluation departs when b_recent < slope_ratio * b_earlier.
  Healthy convergence keeps a constant (or steepening) log-log slope; a teacher-hacking run's
  proxy keeps falling, ever more slowly.
- `departure`: the z-score of the evaluation against the `law` fitted on [t / window, t),
    z(t) = (log m(t) - log law(t)) / sqrt(max(s, noise_floor)^2 + se_log_law(t)^2),
  departing beyond `threshold` in `direction` (above: convergence stalls or reverses).
- `early_stopping`: the rise over the running minimum, departing above `noise_floor`.
`best_checkpoint` names, for a departing run, the evaluation the rule would have kept.
"""

from __future__ import annotations

import numpy as np

from th_distill.detection.laws import Fit, failed_fit, fit_law, fit_loglog
from th_distill.detection.settings import DetectorSettings

# 'slowdown' compares slopes only where the earlier span converges: a log-log slope above this
# (and above 2 standard errors).
MIN_CONVERGENCE_SLOPE = 1e-3

# A rule's score of the last evaluation: (score, whether it departs, the fit behind it).
Score = tuple[float, bool, Fit]


def departure_scores(
  fit: Fit, steps: np.ndarray, values: np.ndarray, noise_floor: float
) -> np.ndarray:
  """z-scores of (steps, values) against `fit` (module docstring); nan where a value is not
  finite or > 0."""
  steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
  noise = np.sqrt(max(fit.residual_std, noise_floor) ** 2 + fit.log_prediction_std(steps) ** 2)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_values = np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)
    return (log_values - np.log(fit.predict(steps))) / noise


def departs(z: np.ndarray, settings: DetectorSettings) -> np.ndarray:
  """Whether each z-score departs beyond `settings.threshold` in `settings.direction`."""
  if settings.direction == "above":
    return z > settings.threshold
  if settings.direction == "below":
    return z < -settings.threshold
  return np.abs(z) > settings.threshold


def _span_fit(
  steps: np.ndarray, values: np.ndarray, first: float, last: float, include_last: bool, points: int
) -> Fit:
  """The log-log line through the evaluations in [first, last] (or [first, last))."""
  keep = (steps >= first) & ((steps <= last) if include_last else (steps < last))
  return fit_loglog(steps[keep], values[keep], points)


def _slowdown(steps: np.ndarray, values: np.ndarray, settings: DetectorSettings) -> Score:
  t, window, points = steps[-1], settings.window, settings.min_fit_points
  recent = _span_fit(steps, values, t / window, t, True, points)
  earlier = _span_fit(steps, values, t / window**2, t / window, False, points)
  if not (
    recent.ok
    and earlier.ok
    and earlier.params["b"] > max(2 * earlier.stderr["b"], MIN_CONVERGENCE_SLOPE)
  ):
    return float("nan"), False, recent  # no convergence to slow down from
  ratio = recent.params["b"] / earlier.params["b"]
  return ratio, bool(ratio < settings.slope_ratio), recent


def _departure(steps: np.ndarray, values: np.ndarray, settings: DetectorSettings) -> Score:
  start = np.searchsorted(steps, steps[-1] / settings.window)
  fit = fit_law(settings.law, steps[start:-1], values[start:-1], settings.min_fit_points)
  if not fit.ok:
    return float("nan"), False, fit
  z = float(departure_scores(fit, steps[-1], values[-1], settings.noise_floor))
  return z, bool(departs(np.asarray(z), settings)), fit


def _early_stopping(steps: np.ndarray, values: np.ndarray, settings: DetectorSettings) -> Score:
  best = np.nanmin(values) if np.any(np.isfinite(values)) else np.nan
  rise = float(values[-1] / best - 1.0) if np.isfinite(values[-1]) else float("nan")
  return rise, bool(rise > settings.noise_floor), failed_fit("loglog", 0, "no law fitted")


_SCORERS = {"slowdown": _slowdown, "departure": _departure, "early_stopping": _early_stopping}


def score(steps: np.ndarray, values: np.ndarray, settings: DetectorSettings) -> Score:
  """The rule's (score, departs, fit) of the last evaluation of (steps, values), both [E]
  floats: 'slowdown': the slope ratio and the recent span's log-log line; 'departure': the
  z-score and the law fitted before it; 'early_stopping': the rise over the running minimum."""
  return _SCORERS[settings.rule](steps, values, settings)


def best_checkpoint(
  steps: np.ndarray, values: np.ndarray, start: int, settings: DetectorSettings
) -> int:
  """The index of the rule's best checkpoint for a departing run from index `start`: at or
  before steps[start] / window ('slowdown'), the running minimum before it ('early_stopping'),
  the evaluation before it ('departure')."""
  if settings.rule == "slowdown":
    before = np.flatnonzero(steps <= steps[start] / settings.window)
    return int(before[-1]) if len(before) else 0
  if settings.rule == "early_stopping":
    return int(np.nanargmin(values[:start]))
  return start - 1


def describe(settings: DetectorSettings) -> str:
  """What a departing evaluation is under `settings`, as a phrase for `Detection.reason`."""
  s = settings
  if s.rule == "slowdown":
    return (
      f"with a log-log slope over the last x{s.window:g} of steps below {s.slope_ratio:g} "
      "times the slope over the span before"
    )
  if s.rule == "early_stopping":
    return f"more than {100 * s.noise_floor:g}% above the running minimum"
  return f"departing {s.direction} the {s.law} law by more than {s.threshold:g} noise std"
