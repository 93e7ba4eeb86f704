"""What a user keeps from a run, by the detector or by the rules it must beat, on a whole curve.

A `Method` reads one finished curve (the held-out proxy at each evaluation) and decides whether
it acts and which checkpoint it keeps (`Decision`); `th_distill.results.detector_scores` scores
each one against the oracle. The methods:

- `DetectorMethod`: a `detection.DetectorSettings` rule (the detector, early stopping, a law's
  departure) keeping its own `best_predicted_step`, or with `rollback` w > 0 the last evaluation
  at or before (firing step) / w: the detector's roll-back (`slowdown`, window w) given to
  another rule;
- `FixedFraction`: no detection at all: always keep the evaluation at a fixed fraction of the
  run (it "acts" on every run, at that evaluation).

`clopper_pearson` is the exact binomial interval the scores are reported with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
from scipy import stats

from th_distill import detection


@dataclasses.dataclass(frozen=True)
class Decision:
  """A method's decision on one curve: whether it acted (`fired`), the step at which it did
  (None if not) and the step of the checkpoint it keeps (None if it did not act: the run's
  last)."""

  fired: bool
  step: int | None
  kept_step: int | None


class Method(Protocol):
  """Decides on one finished curve; `describe()` names its settings, `to_json()` holds them."""

  def decide(self, steps: np.ndarray, values: np.ndarray) -> Decision: ...

  def describe(self) -> str: ...

  def to_json(self) -> dict[str, Any]: ...


def _last_at_or_before(steps: np.ndarray, step: float) -> int:
  before = np.flatnonzero(steps <= step)
  return int(steps[before[-1]] if len(before) else steps[0])


_SHOWN = {
  "slowdown": ("window", "slope_ratio", "patience"),
  "early_stopping": ("noise_floor", "patience"),
  "departure": ("law", "window", "threshold", "patience"),
}


@dataclasses.dataclass(frozen=True)
class DetectorMethod:
  """A detector rule on the curve; `rollback` 0 keeps the rule's `best_predicted_step`, w > 0 the
  last evaluation at or before (firing step) / w."""

  settings: detection.DetectorSettings
  rollback: float = 0.0

  def decide(self, steps: np.ndarray, values: np.ndarray) -> Decision:
    found = detection.detect(steps, values, self.settings)
    if not found.detected:
      return Decision(False, None, None)
    kept = found.best_predicted_step
    if self.rollback:
      kept = _last_at_or_before(np.asarray(steps), found.step / self.rollback)
    return Decision(True, int(found.step), int(kept))

  def with_min_step(self, min_step: int) -> DetectorMethod:
    return dataclasses.replace(self, settings=dataclasses.replace(self.settings, min_step=min_step))

  def describe(self) -> str:
    s = dataclasses.asdict(self.settings)
    shown = [
      f"{k} {s[k]:g}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in _SHOWN[s["rule"]]
    ]
    if self.rollback:
      shown.append(f"kept at firing step / {self.rollback:g}")
    return ", ".join(shown)

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self.settings), "rollback": self.rollback}


@dataclasses.dataclass(frozen=True)
class FixedFraction:
  """Keeps the last evaluation at or before `fraction` of the run's last step, on every run."""

  fraction: float

  def decide(self, steps: np.ndarray, values: np.ndarray) -> Decision:
    del values
    kept = _last_at_or_before(np.asarray(steps), self.fraction * float(steps[-1]))
    return Decision(True, kept, kept)

  def describe(self) -> str:
    return f"keep the evaluation at {self.fraction:g} of the run"

  def to_json(self) -> dict[str, Any]:
    return {"rule": "fixed_fraction", "fraction": self.fraction}


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
  """The exact (Clopper-Pearson) `level` interval of a binomial proportion; (nan, nan) for no
  trials."""
  if trials == 0:
    return (float("nan"), float("nan"))
  alpha = 1 - level
  low = 0.0 if successes == 0 else stats.beta.ppf(alpha / 2, successes, trials - successes + 1)
  high = (
    1.0 if successes == trials else stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
  )
  return (float(low), float(high))
