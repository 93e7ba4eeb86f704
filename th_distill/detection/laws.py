"""Convergence laws fitted to training curves.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

LAWS = ("power", "loglog")


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


def failed_fit(law: str, num_points: int, reason: str) -> Fit:
  """A `Fit` of `law` with `ok = False`, nan parameters and `reason`."""
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
    return failed_fit(
      "loglog", n, f"not enough points: {n} usable (finite, > 0), need {max(min_points, 3)}"
    )
  lx, ly = np.log(x), np.log(y)
  if np.ptp(lx) == 0:
    return failed_fit("loglog", n, "all points share one x: the slope is undefined")
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
    return failed_fit(
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
