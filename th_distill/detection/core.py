"""Convergence laws fitted to training curves, and teacher-hacking detection from them.

A distillation metric that converges follows a polynomial law in the step t. Two laws, both fitted
by least squares on log m (so every point weighs by its relative error, as eval noise does):

  `power`:  m(t) = a * t^(-b) + c     (a >= 0, b >= 0, c >= 0: a decay to a floor c)
  `loglog`: log m = log a - b log t   (the straight line of a log-log plot; c = 0)

and, when the oracle is known, golden against proxy on a log-log plot: log golden = log A +
alpha log proxy (`fit_golden_vs_proxy`). Every fit reports its parameters, their standard errors
(from the Jacobian at the optimum: cov = s^2 (J^T J)^-1), the residual standard deviation s of
log m, and the standard error of a prediction in log space (delta method), so extrapolations come
with an uncertainty. Points that are not finite or not > 0, and steps < 1, are dropped; fewer than
`min_points` left gives a `Fit` with `ok = False` and the reason, never an exception.

The detector (`detect`, or the incremental `Detector`) sees only one curve, by default the proxy
(distance to the teacher on held-out prompts), and scores each evaluation at step t from the
evaluations up to it, by one of three rules (`DetectorSettings.rule`):
- `slowdown` (default): the log-log slope b of the curve over [t / window, t] against its slope
  over [t / window^2, t / window); the evaluation departs when b_recent < slope_ratio * b_earlier.
  Healthy convergence keeps a constant (or steepening) log-log slope; a teacher-hacking run's
  proxy keeps falling, ever more slowly.
- `departure`: the z-score of the evaluation against the `law` fitted on [t / window, t),
    z(t) = (log m(t) - log law(t)) / sqrt(max(s, noise_floor)^2 + se_log_law(t)^2),
  departing beyond `threshold` in `direction` (above: convergence stalls or reverses).
- `early_stopping`: the rise over the running minimum, departing above `noise_floor`.
It fires at the first evaluation that completes `patience` consecutive departures (evaluations
before `min_step` are not scored) and names its best checkpoint (`best_predicted_step`).
`ground_truth` gives what the oracle says: the step of the golden minimum and the rise after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

LAWS = ("power", "loglog")
RULES = ("slowdown", "departure", "early_stopping")
# 'slowdown' compares slopes only where the earlier span converges: a log-log slope above this
# (and above 2 standard errors).
MIN_CONVERGENCE_SLOPE = 1e-3
DIRECTIONS = ("above", "below", "both")


@dataclasses.dataclass(frozen=True)
class Fit:
  """A fitted law. `params` / `stderr` are keyed by parameter name (power: a, b, c; loglog and
  golden-vs-proxy: a, b with log m = log a - b log x). `cov` is in the order of `params`."""

  law: str
  ok: bool
  params: dict[str, float]
  stderr: dict[str, float]
  cov: np.ndarray
  residual_std: float  # of log m around the law, corrected for the fitted parameters
  num_points: int
  reason: str = ""
  x_range: tuple[float, float] = (float("nan"), float("nan"))  # of the points fitted

  def predict(self, x: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """The law's value at x (steps, or proxy values for golden-vs-proxy)."""
    x = np.asarray(x, dtype=float)
    p = self.params
    if self.law == "power":
      return p["a"] * x ** -p["b"] + p["c"]
    return p["a"] * x ** -p["b"]

  def log_prediction_std(self, x: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Standard error of log(predict(x)) from the parameters' covariance (delta method)."""
    x = np.asarray(x, dtype=float)
    grad = _log_law_gradient(self.law, self.params, x)  # [..., P]
    return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", grad, self.cov, grad), 0.0))

  def to_json(self) -> dict[str, Any]:
    return {
      "law": self.law,
      "ok": self.ok,
      "params": self.params,
      "stderr": self.stderr,
      "residual_std": self.residual_std,
      "num_points": self.num_points,
      "x_range": list(self.x_range),
      "reason": self.reason,
    }


def _failed(law: str, num_points: int, reason: str) -> Fit:
  names = ("a", "b", "c") if law == "power" else ("a", "b")
  nan = {k: float("nan") for k in names}
  return Fit(
    law, False, nan, dict(nan), np.full((len(names),) * 2, np.nan), float("nan"), num_points, reason
  )


def _usable(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """Points with finite x >= 1 (steps) or x > 0, and finite y > 0, as float arrays."""
  x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}.")
  keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  return x[keep], y[keep]


def _log_law_gradient(law: str, params: dict[str, float], x: np.ndarray) -> np.ndarray:
  """d log(law(x)) / d params, shape [..., P]."""
  a, b = params["a"], params["b"]
  u = x**-b
  if law == "power":
    value = a * u + params["c"]
    return np.stack([u / value, -a * u * np.log(x) / value, 1.0 / value], axis=-1)
  return np.stack([np.broadcast_to(1.0 / a, x.shape), -np.log(x)], axis=-1)


def _covariance(jacobian: np.ndarray, residual_var: float) -> np.ndarray:
  return residual_var * np.linalg.pinv(jacobian.T @ jacobian)


def fit_loglog(x: Sequence[float], y: Sequence[float], min_points: int = 3) -> Fit:
  """Least-squares line through (log x, log y): log y = log a - b log x."""
  x, y = _usable(x, y)
  n = len(x)
  if n < max(min_points, 3):
    return _failed(
      "loglog", n, f"not enough points: {n} usable (finite, > 0), need {max(min_points, 3)}"
    )
  lx, ly = np.log(x), np.log(y)
  if np.ptp(lx) == 0:
    return _failed("loglog", n, "all points share one x: the slope is undefined")
  design = np.stack([np.ones(n), -lx], axis=1)  # columns: log a, b
  coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
  resid = ly - design @ coef
  var = float(resid @ resid) / (n - 2)
  params = {"a": float(np.exp(coef[0])), "b": float(coef[1])}
  # Jacobian of log y in (a, b): d/da = 1/a, d/db = -log x.
  cov = _covariance(np.stack([np.full(n, 1.0 / params["a"]), -lx], axis=1), var)
  return Fit(
    "loglog",
    True,
    params,
    _stderr(params, cov),
    cov,
    float(np.sqrt(var)),
    n,
    x_range=(float(x.min()), float(x.max())),
  )


def _stderr(params: dict[str, float], cov: np.ndarray) -> dict[str, float]:
  return {k: float(np.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(params)}


def _floor_and_scale(u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
  """For each row of u = x^-b ([G, n], one row per exponent b): (a, c) >= 0 minimising
  sum (log y - log(a u + c))^2, by iteratively reweighted linear least squares (weights
  1/prediction^2: relative errors). Returns (a, c, sse), each [G]; sse is the log-space sum of
  squares (inf where the prediction is not positive)."""
  w = np.broadcast_to(1.0 / y**2, u.shape)
  for _ in range(6):
    # Weighted normal equations of y ~ a u + c, solved in closed form.
    suu, su, s1 = (w * u * u).sum(-1), (w * u).sum(-1), w.sum(-1)
    suy, sy = (w * u * y).sum(-1), (w * y).sum(-1)
    det = suu * s1 - su * su
    with np.errstate(divide="ignore", invalid="ignore"):
      a = np.where(det > 0, (suy * s1 - su * sy) / det, 0.0)
      c = np.where(det > 0, (suu * sy - su * suy) / det, -1.0)
      floorless = c < 0  # the floor at its bound: a * u alone
      a = np.where(floorless, suy / suu, a)
      c = np.where(floorless, 0.0, c)
    flat = ~(a >= 0)  # no decay: a constant
    a = np.where(flat, 0.0, a)
    c = np.where(flat, np.exp(np.mean(np.log(y))), c)
    prediction = a[:, None] * u + c[:, None]
    w = 1.0 / np.maximum(prediction, 1e-300) ** 2
  with np.errstate(invalid="ignore", divide="ignore"):
    resid = np.log(y) - np.log(prediction)
  sse = np.where(np.all(prediction > 0, axis=-1), (resid**2).sum(-1), np.inf)
  return a, c, sse


def fit_power_law(
  steps: Sequence[float], values: Sequence[float], min_points: int = 5, max_exponent: float = 4.0
) -> Fit:
  """Fits m(t) = a * t^(-b) + c (a, c >= 0, 0 <= b <= max_exponent) in log space.

  The exponent is profiled: (a, c) are solved for every b of a grid, and the grid is refined
  three times around its best point (resolution max_exponent * 1.3e-5). A constant curve gives
  a = b = 0, c = its value.
  """
  x, y = _usable(steps, values)
  n = len(x)
  if n < max(min_points, 4):
    return _failed(
      "power",
      n,
      f"not enough points: {n} usable (finite, > 0, step >= 1), need {max(min_points, 4)}",
    )
  x_range = (float(x.min()), float(x.max()))
  if np.ptp(np.log(y)) < 1e-12:
    params = {"a": 0.0, "b": 0.0, "c": float(y[0])}
    return Fit(
      "power", True, params, {k: 0.0 for k in params}, np.zeros((3, 3)), 0.0, n, x_range=x_range
    )
  lo, hi = 0.0, max_exponent
  for _ in range(4):
    grid = np.linspace(lo, hi, 41)
    a, c, sse = _floor_and_scale(x[None, :] ** -grid[:, None], y)
    best = int(np.argmin(sse))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  params = {"a": float(a[best]), "b": float(grid[best]), "c": float(c[best])}
  var = float(sse[best]) / max(n - 3, 1)
  cov = _covariance(_log_law_gradient("power", params, x), var)
  return Fit(
    "power", True, params, _stderr(params, cov), cov, float(np.sqrt(var)), n, x_range=x_range
  )


def fit_law(law: str, steps: Sequence[float], values: Sequence[float], min_points: int = 5) -> Fit:
  """`fit_power_law` or `fit_loglog` by name (one of LAWS)."""
  if law == "power":
    return fit_power_law(steps, values, min_points)
  if law == "loglog":
    return fit_loglog(steps, values, min_points)
  raise ValueError(f"Unknown law {law!r}; expected one of {LAWS}.")


def fit_golden_vs_proxy(
  proxy: Sequence[float], golden: Sequence[float], min_points: int = 3
) -> Fit:
  """log golden = log A - b log proxy, i.e. golden = A * proxy^alpha with alpha = -b.

  alpha > 0: golden and proxy fall together; a poor fit or alpha <= 0 over the late part of a
  run is the U-shaped proxy-golden curve of teacher hacking."""
  return fit_loglog(proxy, golden, min_points)


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """How the detector reads a curve (module docstring: the three rules).

  Attributes:
    rule: one of RULES. 'slowdown' (default): the curve's log-log slope over the last span
      [t / window, t] falls below `slope_ratio` times its slope over the span before it;
      'departure': evaluations depart from the `law` fitted on [t / window, t) by more than
      `threshold` noise std; 'early_stopping': the curve rises more than `noise_floor`
      (relative) above its running minimum.
    law: the convergence law of the 'departure' rule, one of LAWS.
    min_fit_points: evaluations a fit needs (in each span for 'slowdown').
    window: the ratio of each span's last to first step (the spans are log(window) wide).
    patience: consecutive departing evaluations needed to fire.
    slope_ratio: 'slowdown' departs where (recent slope) / (earlier slope) < slope_ratio.
    threshold: 'departure' departs beyond this many noise standard deviations.
    noise_floor: lower bound of the log-space noise s of 'departure' (0.01 = 1% relative; eval
      curves on fixed sets are smoother than their true noise), and the relative rise over the
      running minimum that 'early_stopping' counts.
    direction: 'departure' only: 'above' (the metric is worse than the law: convergence stalls or
      reverses), 'below' or 'both'.
    min_step: evaluations before this step are not scored (they still enter the fits): the first
      steps of a run are a transient that no power law describes.
  """

  rule: str = "slowdown"
  law: str = "power"
  min_fit_points: int = 4
  window: float = 3.0
  patience: int = 1
  slope_ratio: float = 0.7
  threshold: float = 2.5
  noise_floor: float = 0.01
  direction: str = "above"
  min_step: int = 100

  def __post_init__(self):
    problems = []
    if self.rule not in RULES:
      problems.append(f"rule: {self.rule!r} is not one of {RULES}")
    if self.law not in LAWS:
      problems.append(f"law: {self.law!r} is not one of {LAWS}")
    if self.direction not in DIRECTIONS:
      problems.append(f"direction: {self.direction!r} is not one of {DIRECTIONS}")
    if self.min_fit_points < 3:
      problems.append(f"min_fit_points: must be >= 3, got {self.min_fit_points}")
    if self.window <= 1:
      problems.append(f"window: must be > 1, got {self.window}")
    if self.patience < 1:
      problems.append(f"patience: must be >= 1, got {self.patience}")
    if not 0 < self.slope_ratio < 1:
      problems.append(f"slope_ratio: must be in (0, 1), got {self.slope_ratio}")
    if not self.threshold > 0:
      problems.append(f"threshold: must be > 0, got {self.threshold}")
    if not self.noise_floor >= 0:
      problems.append(f"noise_floor: must be >= 0, got {self.noise_floor}")
    if self.min_step < 0:
      problems.append(f"min_step: must be >= 0, got {self.min_step}")
    if problems:
      raise ValueError("Invalid detector settings: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Detection:
  """The detector's verdict on one curve.

  Attributes:
    detected: whether it fired.
    step: the step of the evaluation at which it fired (None if it did not).
    departure_step: the first evaluation of the departing run.
    best_predicted_step: the detector's best checkpoint (None if it did not fire): the last
      evaluation before the departure ('departure'), at or before the start of the first
      departing evaluation's recent span ('slowdown'), the running minimum ('early_stopping').
    fit: the law behind the verdict ('departure': fitted on the window before the departure;
      'slowdown': the log-log line of the recent span at the firing evaluation; when it did not
      fire, the law on the last window; `fit.ok` False if too few points or 'early_stopping').
    steps, scores: every evaluation's step and its score (nan where none), for plots:
      'departure': the z-score against the law fitted before it; 'slowdown': the slope ratio;
      'early_stopping': the relative rise over the running minimum.
    reason: a sentence saying why it fired or not.
  """

  detected: bool
  step: int | None
  departure_step: int | None
  best_predicted_step: int | None
  fit: Fit
  steps: np.ndarray
  scores: np.ndarray
  reason: str

  def to_json(self) -> dict[str, Any]:
    return {
      "detected": self.detected,
      "detected_step": self.step,
      "departure_step": self.departure_step,
      "best_predicted_step": self.best_predicted_step,
      "fit": self.fit.to_json(),
      "reason": self.reason,
    }


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


def _departs(z: np.ndarray, settings: DetectorSettings) -> np.ndarray:
  if settings.direction == "above":
    return z > settings.threshold
  if settings.direction == "below":
    return z < -settings.threshold
  return np.abs(z) > settings.threshold


class Detector:
  """The detector over a curve that grows one evaluation at a time (module docstring).

  `add(step, value)` appends an evaluation; `result()` is the verdict on the curve so far. Each
  evaluation's fits and score are computed once, from the evaluations up to it, so following a
  run of E evaluations costs O(E) fits, and the detector is causal: a run followed live fires at
  the same step as `detect` on the finished curve. `candidate_steps()` names the evaluations whose
  parameters may still become `best_predicted_step` (what a training callback must keep).
  """

  def __init__(self, settings: DetectorSettings = DetectorSettings()):
    self.settings = settings
    self.steps: list[float] = []
    self.values: list[float] = []
    self._fits: list[Fit] = []  # 'departure': the law before j; 'slowdown': the recent span's
    self._scores: list[float] = []
    self._departing: list[bool] = []

  def add(self, step: float, value: float) -> None:
    if self.steps and step <= self.steps[-1]:
      raise ValueError(f"steps must be strictly increasing: {step} after {self.steps[-1]}.")
    self.steps.append(float(step))
    self.values.append(float(value))
    score, departing, fit = getattr(self, f"_score_{self.settings.rule}")()
    if step < self.settings.min_step:
      score, departing = float("nan"), False
    self._fits.append(fit)
    self._scores.append(score)
    self._departing.append(departing)

  def _span_fit(self, first: float, last: float, include_last: bool) -> Fit:
    """The log-log line through the evaluations in [first, last] (or [first, last))."""
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    keep = (steps >= first) & ((steps <= last) if include_last else (steps < last))
    return fit_loglog(steps[keep], values[keep], self.settings.min_fit_points)

  def _score_slowdown(self) -> tuple[float, bool, Fit]:
    t, window = self.steps[-1], self.settings.window
    recent = self._span_fit(t / window, t, include_last=True)
    earlier = self._span_fit(t / window**2, t / window, include_last=False)
    if not (
      recent.ok
      and earlier.ok
      and earlier.params["b"] > max(2 * earlier.stderr["b"], MIN_CONVERGENCE_SLOPE)
    ):
      return float("nan"), False, recent  # no convergence to slow down from
    ratio = recent.params["b"] / earlier.params["b"]
    return ratio, bool(ratio < self.settings.slope_ratio), recent

  def _score_departure(self) -> tuple[float, bool, Fit]:
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    start = np.searchsorted(steps, steps[-1] / self.settings.window)
    fit = fit_law(
      self.settings.law, steps[start:-1], values[start:-1], self.settings.min_fit_points
    )
    if not fit.ok:
      return float("nan"), False, fit
    z = float(departure_scores(fit, steps[-1], values[-1], self.settings.noise_floor))
    return z, bool(_departs(np.asarray(z), self.settings)), fit

  def _score_early_stopping(self) -> tuple[float, bool, Fit]:
    values = np.asarray(self.values)
    best = np.nanmin(values) if np.any(np.isfinite(values)) else np.nan
    rise = float(values[-1] / best - 1.0) if np.isfinite(values[-1]) else float("nan")
    return rise, bool(rise > self.settings.noise_floor), _failed("loglog", 0, "no law fitted")

  def _fires_at(self) -> tuple[int, int] | None:
    """(first departing evaluation, firing evaluation) of the first run of `patience`."""
    patience, run = self.settings.patience, 0
    for j, departing in enumerate(self._departing):
      if self.settings.rule == "departure":
        # Every evaluation of the run is scored against the law fitted before its first one.
        start = j - patience + 1
        if start >= 1 and self.steps[start] >= self.settings.min_step and self._fits[start].ok:
          window = slice(start, j + 1)
          z = departure_scores(
            self._fits[start],
            np.asarray(self.steps[window]),
            np.asarray(self.values[window]),
            self.settings.noise_floor,
          )
          if np.all(_departs(z, self.settings)):
            return start, j
        continue
      run = run + 1 if departing else 0
      if run >= patience:
        return j - patience + 1, j
    return None

  def _best_before(self, start: int) -> int:
    """The index of the detector's best checkpoint for a departing run from `start`."""
    steps = np.asarray(self.steps)
    if self.settings.rule == "slowdown":
      before = np.flatnonzero(steps <= steps[start] / self.settings.window)
      return int(before[-1]) if len(before) else 0
    if self.settings.rule == "early_stopping":
      return int(np.nanargmin(np.asarray(self.values[:start])))
    return start - 1

  def candidate_steps(self) -> set[int]:
    """Steps whose parameters may still be needed as `best_predicted_step` (empty once the
    detector fired): those a departing run starting at any evaluation still undecided (the last
    `patience` ones, or later) would point to."""
    if not self.steps or self._fires_at() is not None:
      return set()
    steps = np.asarray(self.steps)
    if self.settings.rule == "early_stopping":
      return {
        int(steps[int(np.nanargmin(self.values))])
        if np.any(np.isfinite(self.values))
        else int(steps[-1]),
        int(steps[-1]),
      }
    first_open = max(len(steps) - self.settings.patience, 0)
    lowest = self._best_before(first_open) if first_open > 0 else 0
    return {int(s) for s in steps[max(lowest, 0) :]}

  def result(self) -> Detection:
    """The verdict on the evaluations added so far."""
    settings = self.settings
    steps, scores = np.asarray(self.steps), np.asarray(self._scores, dtype=float)
    fired = self._fires_at()
    if fired is not None:
      start, fire = fired
      best = self._best_before(start)
      return Detection(
        True,
        int(steps[fire]),
        int(steps[start]),
        int(steps[best]),
        self._fits[fire if settings.rule == "slowdown" else start],
        steps,
        scores,
        f"{settings.patience} consecutive evaluations from step {int(steps[start])} "
        f"{self._what_departs()} (scores "
        f"{', '.join(f'{v:.2f}' for v in scores[start : fire + 1])})",
      )
    last = self._last_fit()
    if np.any(np.isfinite(scores)):
      reason = f"no {settings.patience} consecutive evaluations {self._what_departs()}"
    elif not last.ok:
      reason = f"the curve could never be scored ({last.reason})"
    else:
      reason = (
        "the curve could never be scored (it never fell over a span of x"
        f"{settings.window:g} steps: no convergence to slow down from)"
      )
    return Detection(False, None, None, None, last, steps, scores, reason)

  def _what_departs(self) -> str:
    s = self.settings
    if s.rule == "slowdown":
      return (
        f"with a log-log slope over the last x{s.window:g} of steps below {s.slope_ratio:g} "
        "times the slope over the span before"
      )
    if s.rule == "early_stopping":
      return f"more than {100 * s.noise_floor:g}% above the running minimum"
    return f"departing {s.direction} the {s.law} law by more than {s.threshold:g} noise std"

  def _last_fit(self) -> Fit:
    if not self.steps:
      return _failed("loglog", 0, "no evaluations")
    if self.settings.rule == "early_stopping":
      return self._fits[-1]
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    start = np.searchsorted(steps, steps[-1] / self.settings.window)
    law = self.settings.law if self.settings.rule == "departure" else "loglog"
    return fit_law(law, steps[start:], values[start:], self.settings.min_fit_points)


def detect(
  steps: Sequence[int], values: Sequence[float], settings: DetectorSettings = DetectorSettings()
) -> Detection:
  """The detector's verdict on a whole curve (evaluations in strictly increasing step order)."""
  steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
  if steps.shape != values.shape or steps.ndim != 1:
    raise ValueError(
      f"steps and values must be 1-D and equally long, got {steps.shape} and {values.shape}."
    )
  detector = Detector(settings)
  for step, value in zip(steps, values):
    detector.add(step, value)
  return detector.result()


def ground_truth(
  steps: Sequence[int], golden: Sequence[float], threshold_pct: float
) -> dict[str, Any]:
  """What the oracle says of a run: the golden minimum, its step, the relative rise after it
  (100 * (final - min) / min) and whether that rise reaches `threshold_pct`."""
  steps, golden = np.asarray(steps), np.asarray(golden, dtype=float)
  finite = np.isfinite(golden)
  if not np.any(finite):
    return {
      "golden_min": float("nan"),
      "golden_min_step": None,
      "golden_rise_pct": float("nan"),
      "golden_rises": False,
    }
  best = int(np.nanargmin(np.where(finite, golden, np.nan)))
  final = golden[np.flatnonzero(finite)[-1]]
  rise = 100.0 * (final - golden[best]) / golden[best]
  return {
    "golden_min": float(golden[best]),
    "golden_min_step": int(steps[best]),
    "golden_rise_pct": float(rise),
    "golden_rises": bool(rise >= threshold_pct),
  }
