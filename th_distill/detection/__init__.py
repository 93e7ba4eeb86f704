"""Teacher-hacking detection from the training curves alone: convergence laws fitted to a
metric's curve and the rules that read a departure from them.

The names below are the package's public API (docs/detection.md); `config` reads the `detection`
section of a run's config and `monitor` runs the detector during training.
"""

from th_distill.detection.core import (
  DIRECTIONS,
  LAWS,
  RULES,
  Detection,
  Detector,
  DetectorSettings,
  Fit,
  departure_scores,
  detect,
  fit_golden_vs_proxy,
  fit_law,
  fit_loglog,
  fit_power_law,
  ground_truth,
)

__all__ = [
  "DIRECTIONS",
  "LAWS",
  "RULES",
  "Detection",
  "Detector",
  "DetectorSettings",
  "Fit",
  "departure_scores",
  "detect",
  "fit_golden_vs_proxy",
  "fit_law",
  "fit_loglog",
  "fit_power_law",
  "ground_truth",
]
