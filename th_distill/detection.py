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
any metric that should keep converging). For each evaluation j it fits the law to the evaluations
before j (the "early part") and scores the next `patience` evaluations by their departure from the
extrapolated law, in units of the law's own noise:

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
            "reason": self.reason}


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
  return Fit("loglog", True, params, _stderr(params, cov), cov, float(np.sqrt(var)), n)


def _stderr(params: dict[str, float], cov: np.ndarray) -> dict[str, float]:
  return {k: float(np.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(params)}


def _floor_and_scale(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """For fixed u = x^-b: (a, c) >= 0 minimising sum (log y - log(a u + c))^2, found by
  iteratively reweighted linear least squares (weights 1/prediction: relative errors), and the
  log-space sum of squares. Returns (a, c, sse)."""
  weights = 1.0 / y
  a = c = 0.0
  for _ in range(6):
    design = np.stack([u, np.ones_like(u)], axis=1) * weights[:, None]
    (a, c), *_ = np.linalg.lstsq(design, y * weights, rcond=None)
    if c < 0:  # the floor is at its bound: a * u alone
      a, c = float((u * weights) @ (y * weights) / ((u * weights) @ (u * weights))), 0.0
    if a < 0:  # no decay: a constant
      a, c = 0.0, float(np.exp(np.mean(np.log(y))))
    prediction = a * u + c
    if np.any(prediction <= 0):
      return a, c, float("inf")
    weights = 1.0 / prediction
  resid = np.log(y) - np.log(a * u + c)
  return float(a), float(c), float(resid @ resid)


def fit_power_law(steps: Sequence[float], values: Sequence[float], min_points: int = 5,
                  max_exponent: float = 4.0) -> Fit:
  """Fits m(t) = a * t^(-b) + c (a, c >= 0, 0 <= b <= max_exponent) in log space.

  The exponent is profiled: a grid over b, then golden-section refinement around the best grid
  point; (a, c) are solved for each b. A constant curve gives a = b = 0, c = its value.
  """
  x, y = _usable(steps, values)
  n = len(x)
  if n < max(min_points, 4):
    return _failed("power", n, f"not enough points: {n} usable (finite, > 0, step >= 1), need "
                   f"{max(min_points, 4)}")
  if np.ptp(np.log(y)) < 1e-12:
    params = {"a": 0.0, "b": 0.0, "c": float(y[0])}
    return Fit("power", True, params, {k: 0.0 for k in params}, np.zeros((3, 3)), 0.0, n)

  def profile(b: float) -> float:
    return _floor_and_scale(x ** -b, y)[2]

  grid = np.linspace(0.0, max_exponent, 161)
  sse = np.array([profile(b) for b in grid])
  best = int(np.argmin(sse))
  lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  ratio = (np.sqrt(5) - 1) / 2
  for _ in range(40):  # golden-section search of the profile on [lo, hi]
    m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    if profile(m1) <= profile(m2):
      hi = m2
    else:
      lo = m1
  b = (lo + hi) / 2 if profile((lo + hi) / 2) <= sse[best] else float(grid[best])
  a, c, sse_best = _floor_and_scale(x ** -b, y)
  params = {"a": a, "b": float(b), "c": c}
  dof = max(n - 3, 1)
  var = sse_best / dof
  cov = _covariance(_log_law_gradient("power", params, x), var)
  return Fit("power", True, params, _stderr(params, cov), cov, float(np.sqrt(var)), n)


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
    min_fit_points: evaluations (at step >= 1) needed before the law is fitted at all.
    patience: consecutive departing evaluations needed to fire.
    threshold: departure, in noise standard deviations, that counts.
    noise_floor: lower bound of the log-space noise s (0.01 = 1% relative): eval curves on fixed
      sets are smoother than their true noise, so a fit's residuals alone would under-state it.
    direction: 'above' (the metric is worse than the law: convergence stalls or reverses),
      'below' or 'both'.
  """
  law: str = "power"
  min_fit_points: int = 8
  patience: int = 3
  threshold: float = 3.0
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
    if self.patience < 1:
      problems.append(f"patience: must be >= 1, got {self.patience}")
    if self.threshold <= 0 or self.noise_floor < 0:
      problems.append("threshold must be > 0 and noise_floor >= 0")
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
    fit: the law fitted on the evaluations before the departure (or on every evaluation when it
      did not fire; `fit.ok` False when there were too few).
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


def detect(steps: Sequence[int], values: Sequence[float],
           settings: DetectorSettings = DetectorSettings()) -> Detection:
  """Runs the detector over a whole curve (evaluations in step order; see the module docstring).

  Causal: the verdict at an evaluation depends only on the evaluations up to it, so running this
  on every prefix of a curve (as `HackingMonitor` does during training) fires at the same step.
  """
  steps = np.asarray(steps, dtype=float)
  values = np.asarray(values, dtype=float)
  if steps.shape != values.shape or steps.ndim != 1:
    raise ValueError(f"steps and values must be 1-D and equally long, got {steps.shape} and "
                     f"{values.shape}.")
  if np.any(np.diff(steps) <= 0):
    raise ValueError("steps must be strictly increasing.")
  scores = np.full(len(steps), np.nan)
  usable = np.isfinite(values) & (values > 0) & (steps >= 1)
  fits: dict[int, Fit] = {}

  def fit_before(j: int) -> Fit:  # the law on every usable evaluation before j
    if j not in fits:
      fits[j] = fit_law(settings.law, steps[:j], values[:j], settings.min_fit_points)
    return fits[j]

  for j in range(len(steps)):
    if np.count_nonzero(usable[:j]) >= settings.min_fit_points and fit_before(j).ok:
      scores[j] = departure_scores(fit_before(j), steps[j:j + 1], values[j:j + 1],
                                   settings.noise_floor)[0]
  for j in range(len(steps) - settings.patience + 1):
    if not usable[j] or np.count_nonzero(usable[:j]) < settings.min_fit_points:
      continue
    fit = fit_before(j)
    if not fit.ok:
      continue
    window = slice(j, j + settings.patience)
    z = departure_scores(fit, steps[window], values[window], settings.noise_floor)
    if np.all(_departs(z, settings)):
      fire = j + settings.patience - 1
      return Detection(
          True, int(steps[fire]), int(steps[j]), int(steps[j - 1]), fit, steps, scores,
          f"{settings.patience} consecutive evaluations from step {int(steps[j])} depart "
          f"{settings.direction} the {settings.law} law fitted on the {fit.num_points} before "
          f"by more than {settings.threshold} noise std (z = "
          f"{', '.join(f'{v:.1f}' for v in z)})")
  whole = fit_law(settings.law, steps, values, settings.min_fit_points)
  reason = (f"no {settings.patience} consecutive departures beyond {settings.threshold} noise "
            f"std from the {settings.law} law" if whole.ok else whole.reason)
  return Detection(False, None, None, None, whole, steps, scores, reason)


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
