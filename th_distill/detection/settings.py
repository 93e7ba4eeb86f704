"""The detector's settings (`DetectorSettings`) and the names they may take.

Validation has one form: `DetectorSettings.problems()` lists (field, message) pairs, the field
named as in the config's `detection` section; construction raises a ValueError from them.
"""

from __future__ import annotations

import dataclasses

from th_distill.detection.laws import LAWS

RULES = ("slowdown", "departure", "early_stopping")
DIRECTIONS = ("above", "below", "both")


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """How the detector reads a curve (`th_distill.detection.rules`: the three rules).

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
    check: init-only: False builds the settings without raising, to list their `problems()`.
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
  check: dataclasses.InitVar[bool] = True

  def __post_init__(self, check: bool) -> None:
    found = self.problems() if check else []
    if found:
      raise ValueError(
        "Invalid detector settings: " + "; ".join(f"{field}: {why}" for field, why in found)
      )

  def problems(self) -> list[tuple[str, str]]:
    """(field, message) for every invalid setting; [] if none."""
    checks = (
      (self.rule in RULES, "rule", f"{self.rule!r} is not one of {RULES}"),
      (self.law in LAWS, "law", f"{self.law!r} is not one of {LAWS}"),
      (self.direction in DIRECTIONS, "direction", f"{self.direction!r} is not one of {DIRECTIONS}"),
      (self.min_fit_points >= 3, "min_fit_points", f"must be >= 3, got {self.min_fit_points}"),
      (self.window > 1, "window", f"must be > 1, got {self.window}"),
      (self.patience >= 1, "patience", f"must be >= 1, got {self.patience}"),
      (0 < self.slope_ratio < 1, "slope_ratio", f"must be in (0, 1), got {self.slope_ratio}"),
      (self.threshold > 0, "threshold", f"must be > 0, got {self.threshold}"),
      (self.noise_floor >= 0, "noise_floor", f"must be >= 0, got {self.noise_floor}"),
      (self.min_step >= 0, "min_step", f"must be >= 0, got {self.min_step}"),
    )
    return [(field, message) for ok, field, message in checks if not ok]


# The default settings (frozen, so one instance serves as every default argument).
DEFAULTS = DetectorSettings()
