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

The detector (`detect`) sees only a proxy curve (distance to the teacher on held-out prompts, or
any metric that should keep converging). For each evaluation j at step t_j it fits the law to the
evaluations before j with step >= t_j / `window` (the part of the curve just before j, in log
time; the first steps of a run are a transient that no power law of t describes) and scores the
next `patience` evaluations by their departure from the extrapolated law, in units of the law's
own noise:

  z(t) = (log m(t) - log law(t)) / sqrt(max(s, noise_floor)^2 + se_log_law(t)^2)

It fires at the first evaluation that completes `patience` consecutive departures beyond
`threshold` (above the law by default: convergence stalls or reverses). The evaluation before the
departing run is the detector's best guess of the best checkpoint (`best_predicted_step`).
`ground_truth` gives what the oracle says: the step of the golden minimum and the rise after it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

LAWS = ("power", "loglog")
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
    return {"law": self.law, "ok": self.ok, "params": self.params, "stderr": self.stderr,
            "residual_std": self.residual_std, "num_points": self.num_points,
            "x_range": list(self.x_range), "reason": self.reason}


def _failed(law: str, num_points: int, reason: str) -> Fit:
  names = ("a", "b", "c") if law == "power" else ("a", "b")
  nan = {k: float("nan") for k in names}
  return Fit(law, False, nan, dict(nan), np.full((len(names),) * 2, np.nan), float("nan"),
             num_points, reason)


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
  u = x ** -b
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
    return _failed("loglog", n, f"not enough points: {n} usable (finite, > 0), need "
                   f"{max(min_points, 3)}")
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
  return Fit("loglog", True, params, _stderr(params, cov), cov, float(np.sqrt(var)), n,
             x_range=(float(x.min()), float(x.max())))


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
    w = 1.0 / np.maximum(prediction, 1e-300)**2
  with np.errstate(invalid="ignore", divide="ignore"):
    resid = np.log(y) - np.log(prediction)
  sse = np.where(np.all(prediction > 0, axis=-1), (resid**2).sum(-1), np.inf)
  return a, c, sse


def fit_power_law(steps: Sequence[float], values: Sequence[float], min_points: int = 5,
                  max_exponent: float = 4.0) -> Fit:
  """Fits m(t) = a * t^(-b) + c (a, c >= 0, 0 <= b <= max_exponent) in log space.

  The exponent is profiled: (a, c) are solved for every b of a grid, and the grid is refined
  three times around its best point (resolution max_exponent * 1.3e-5). A constant curve gives
  a = b = 0, c = its value.
  """
  x, y = _usable(steps, values)
  n = len(x)
  if n < max(min_points, 4):
    return _failed("power", n, f"not enough points: {n} usable (finite, > 0, step >= 1), need "
                   f"{max(min_points, 4)}")
  x_range = (float(x.min()), float(x.max()))
  if np.ptp(np.log(y)) < 1e-12:
    params = {"a": 0.0, "b": 0.0, "c": float(y[0])}
    return Fit("power", True, params, {k: 0.0 for k in params}, np.zeros((3, 3)), 0.0, n,
               x_range=x_range)
  lo, hi = 0.0, max_exponent
  for _ in range(4):
    grid = np.linspace(lo, hi, 41)
    a, c, sse = _floor_and_scale(x[None, :] ** -grid[:, None], y)
    best = int(np.argmin(sse))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  params = {"a": float(a[best]), "b": float(grid[best]), "c": float(c[best])}
  var = float(sse[best]) / max(n - 3, 1)
  cov = _covariance(_log_law_gradient("power", params, x), var)
  return Fit("power", True, params, _stderr(params, cov), cov, float(np.sqrt(var)), n,
             x_range=x_range)


def fit_law(law: str, steps: Sequence[float], values: Sequence[float],
            min_points: int = 5) -> Fit:
  """`fit_power_law` or `fit_loglog` by name (one of LAWS)."""
  if law == "power":
    return fit_power_law(steps, values, min_points)
  if law == "loglog":
    return fit_loglog(steps, values, min_points)
  raise ValueError(f"Unknown law {law!r}; expected one of {LAWS}.")


def fit_golden_vs_proxy(proxy: Sequence[float], golden: Sequence[float],
                        min_points: int = 3) -> Fit:
  """log golden = log A - b log proxy, i.e. golden = A * proxy^alpha with alpha = -b.

  alpha > 0: golden and proxy fall together; a poor fit or alpha <= 0 over the late part of a
  run is the U-shaped proxy-golden curve of teacher hacking."""
  return fit_loglog(proxy, golden, min_points)


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """How the detector reads a curve.

  Attributes:
    law: the convergence law, one of LAWS.
    min_fit_points: evaluations in the fit window needed before the law is fitted at all.
    window: the law for a candidate departure at step t is fitted on the evaluations at steps in
      [t / window, t): the last `log10(window)` decades before it.
    patience: consecutive departing evaluations needed to fire.
    threshold: departure, in noise standard deviations, that counts.
    noise_floor: lower bound of the log-space noise s (0.01 = 1% relative): eval curves on fixed
      sets are smoother than their true noise, so a fit's residuals alone would under-state it.
    direction: 'above' (the metric is worse than the law: convergence stalls or reverses),
      'below' or 'both'.
  """
  law: str = "power"
  min_fit_points: int = 8
  window: float = 30.0
  patience: int = 3
  threshold: float = 2.5
  noise_floor: float = 0.01
  direction: str = "above"

  def __post_init__(self):
    problems = []
    if self.law not in LAWS:
      problems.append(f"law: {self.law!r} is not one of {LAWS}")
    if self.direction not in DIRECTIONS:
      problems.append(f"direction: {self.direction!r} is not one of {DIRECTIONS}")
    if self.min_fit_points < 4:
      problems.append(f"min_fit_points: must be >= 4, got {self.min_fit_points}")
    if self.window <= 1:
      problems.append(f"window: must be > 1, got {self.window}")
    if self.patience < 1:
      problems.append(f"patience: must be >= 1, got {self.patience}")
    if not self.threshold > 0:
      problems.append(f"threshold: must be > 0, got {self.threshold}")
    if not self.noise_floor >= 0:
      problems.append(f"noise_floor: must be >= 0, got {self.noise_floor}")
    if problems:
      raise ValueError("Invalid detector settings: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Detection:
  """The detector's verdict on one curve.

  Attributes:
    detected: whether it fired.
    step: the step of the evaluation at which it fired (None if it did not).
    departure_step: the first evaluation of the departing run.
    best_predicted_step: the last evaluation before the departure (the detector's best
      checkpoint); None if it did not fire.
    fit: the law fitted on the window before the departure; when it did not fire, the law
      fitted on the last window, the final evaluation included (`fit.ok` False if too few).
    steps, scores: every evaluation's step and its departure z-score against the law fitted on
      the evaluations before it (nan where no fit was possible), for plots.
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
    return {"detected": self.detected, "detected_step": self.step,
            "departure_step": self.departure_step,
            "best_predicted_step": self.best_predicted_step, "fit": self.fit.to_json(),
            "reason": self.reason}


def departure_scores(fit: Fit, steps: np.ndarray, values: np.ndarray,
                     noise_floor: float) -> np.ndarray:
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

  `add(step, value)` appends an evaluation; `result()` is the verdict on the curve so far. Fits
  depend only on the evaluations before their candidate, so each is computed once: following a
  run of E evaluations costs E fits, not E^2. Causal: the verdict at an evaluation depends only on
  the evaluations up to it, so a run followed live fires at the same step as `detect` on the
  finished curve.
  """

  def __init__(self, settings: DetectorSettings = DetectorSettings()):
    self.settings = settings
    self.steps: list[float] = []
    self.values: list[float] = []
    self._fits: list[Fit] = []  # _fits[j]: the law on the window of evaluations before j

  def add(self, step: float, value: float) -> None:
    if self.steps and step <= self.steps[-1]:
      raise ValueError(f"steps must be strictly increasing: {step} after {self.steps[-1]}.")
    self.steps.append(float(step))
    self.values.append(float(value))
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    start = np.searchsorted(steps, step / self.settings.window)
    j = len(steps) - 1
    self._fits.append(fit_law(self.settings.law, steps[start:j], values[start:j],
                              self.settings.min_fit_points))

  def result(self) -> Detection:
    """The verdict on the evaluations added so far."""
    settings, fits = self.settings, self._fits
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    scores = np.array([departure_scores(fit, steps[j], values[j], settings.noise_floor)
                       if fit.ok else np.nan for j, fit in enumerate(fits)], dtype=float)
    for j in range(len(steps) - settings.patience + 1):
      if not fits[j].ok:
        continue
      window = slice(j, j + settings.patience)
      z = departure_scores(fits[j], steps[window], values[window], settings.noise_floor)
      if np.all(_departs(z, settings)):
        fire = j + settings.patience - 1
        return Detection(
            True, int(steps[fire]), int(steps[j]), int(steps[j - 1]), fits[j], steps, scores,
            f"{settings.patience} consecutive evaluations from step {int(steps[j])} depart "
            f"{settings.direction} the {settings.law} law fitted on the {fits[j].num_points} "
            f"before it by more than {settings.threshold} noise std (z = "
            f"{', '.join(f'{v:.1f}' for v in z)})")
    start = np.searchsorted(steps, steps[-1] / settings.window) if len(steps) else 0
    last = fit_law(settings.law, steps[start:], values[start:], settings.min_fit_points)
    reason = (f"no {settings.patience} consecutive departures beyond {settings.threshold} "
              f"noise std from the {settings.law} law" if np.any(np.isfinite(scores)) else
              f"the law could never be fitted ({last.reason})")
    return Detection(False, None, None, None, last, steps, scores, reason)


def detect(steps: Sequence[int], values: Sequence[float],
           settings: DetectorSettings = DetectorSettings()) -> Detection:
  """The detector's verdict on a whole curve (evaluations in strictly increasing step order)."""
  steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
  if steps.shape != values.shape or steps.ndim != 1:
    raise ValueError(f"steps and values must be 1-D and equally long, got {steps.shape} and "
                     f"{values.shape}.")
  detector = Detector(settings)
  for step, value in zip(steps, values):
    detector.add(step, value)
  return detector.result()


def ground_truth(steps: Sequence[int], golden: Sequence[float],
                 threshold_pct: float) -> dict[str, Any]:
  """What the oracle says of a run: the golden minimum, its step, the relative rise after it
  (100 * (final - min) / min) and whether that rise reaches `threshold_pct`."""
  steps, golden = np.asarray(steps), np.asarray(golden, dtype=float)
  finite = np.isfinite(golden)
  if not np.any(finite):
    return {"golden_min": float("nan"), "golden_min_step": None, "golden_rise_pct": float("nan"),
            "golden_rises": False}
  best = int(np.nanargmin(np.where(finite, golden, np.nan)))
  final = golden[np.flatnonzero(finite)[-1]]
  rise = 100.0 * (final - golden[best]) / golden[best]
  return {"golden_min": float(golden[best]), "golden_min_step": int(steps[best]),
          "golden_rise_pct": float(rise), "golden_rises": bool(rise >= threshold_pct)}
