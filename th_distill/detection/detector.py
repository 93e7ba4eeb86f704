"""The causal detector: `Detector` (one evaluation at a time), `detect` (a whole curve) and its
verdict, `Detection`.

The detector sees only one curve, by default the proxy (distance to the teacher on held-out
prompts), and scores each evaluation at step t from the evaluations up to it by its rule
(`th_distill.detection.rules`). It fires at the first evaluation that completes `patience`
consecutive departures (evaluations before `min_step` are not scored) and names its best
checkpoint (`best_predicted_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from th_distill.detection import rules
from th_distill.detection.laws import Fit, failed_fit, fit_law
from th_distill.detection.settings import DEFAULTS, DetectorSettings


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


class Detector:
  """The detector over a curve that grows one evaluation at a time (module docstring).

  `add(step, value)` appends an evaluation; `result()` is the verdict on the curve so far. Each
  evaluation's fits and score are computed once, from the evaluations up to it, so following a
  run of E evaluations costs O(E) fits, and the detector is causal: a run followed live fires at
  the same step as `detect` on the finished curve. `candidate_steps()` names the evaluations whose
  parameters may still become `best_predicted_step` (what a training callback must keep).
  """

  def __init__(self, settings: DetectorSettings = DEFAULTS):
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
    score, departing, fit = rules.score(
      np.asarray(self.steps), np.asarray(self.values), self.settings
    )
    if step < self.settings.min_step:
      score, departing = float("nan"), False
    self._fits.append(fit)
    self._scores.append(score)
    self._departing.append(departing)

  def _fires_at(self) -> tuple[int, int] | None:
    """(first departing evaluation, firing evaluation) of the first run of `patience`."""
    patience, run = self.settings.patience, 0
    for j, departing in enumerate(self._departing):
      if self.settings.rule == "departure":
        # Every evaluation of the run is scored against the law fitted before its first one.
        start = j - patience + 1
        if start >= 1 and self.steps[start] >= self.settings.min_step and self._fits[start].ok:
          window = slice(start, j + 1)
          z = rules.departure_scores(
            self._fits[start],
            np.asarray(self.steps[window]),
            np.asarray(self.values[window]),
            self.settings.noise_floor,
          )
          if np.all(rules.departs(z, self.settings)):
            return start, j
        continue
      run = run + 1 if departing else 0
      if run >= patience:
        return j - patience + 1, j
    return None

  def _best_before(self, start: int) -> int:
    """The index of the detector's best checkpoint for a departing run from `start`."""
    return rules.best_checkpoint(
      np.asarray(self.steps), np.asarray(self.values), start, self.settings
    )

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
        f"{rules.describe(settings)} (scores "
        f"{', '.join(f'{v:.2f}' for v in scores[start : fire + 1])})",
      )
    last = self._last_fit()
    if np.any(np.isfinite(scores)):
      reason = f"no {settings.patience} consecutive evaluations {rules.describe(settings)}"
    elif not last.ok:
      reason = f"the curve could never be scored ({last.reason})"
    else:
      reason = (
        "the curve could never be scored (it never fell over a span of x"
        f"{settings.window:g} steps: no convergence to slow down from)"
      )
    return Detection(False, None, None, None, last, steps, scores, reason)

  def _last_fit(self) -> Fit:
    if not self.steps:
      return failed_fit("loglog", 0, "no evaluations")
    if self.settings.rule == "early_stopping":
      return self._fits[-1]
    steps, values = np.asarray(self.steps), np.asarray(self.values)
    start = np.searchsorted(steps, steps[-1] / self.settings.window)
    law = self.settings.law if self.settings.rule == "departure" else "loglog"
    return fit_law(law, steps[start:], values[start:], self.settings.min_fit_points)


def detect(
  steps: Sequence[int], values: Sequence[float], settings: DetectorSettings = DEFAULTS
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
