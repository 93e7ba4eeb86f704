"""Teacher-hacking detection from the training curves alone: convergence laws fitted to a
metric's curve and the rules that read a departure from them.

The names below are the package's public API (docs/detection.md), from modules of one job each:
`laws` (the fits), `settings` (`DetectorSettings`), `rules` (how an evaluation is scored),
`detector` (`Detector`, `detect`), `curves` (`detect_curve`, `read_curve`: a list of values, a
`metrics.jsonl` or TensorBoard events), `oracle` (`ground_truth`); `config` reads the `detection`
section of a run's config and `monitor` runs the detector during training.
"""

from th_distill.detection.curves import detect_curve, read_curve
from th_distill.detection.detector import Detection, Detector, detect
from th_distill.detection.laws import (
  LAWS,
  Fit,
  fit_golden_vs_proxy,
  fit_law,
  fit_loglog,
  fit_power_law,
)
from th_distill.detection.oracle import ground_truth
from th_distill.detection.rules import departure_scores
from th_distill.detection.settings import DIRECTIONS, RULES, DetectorSettings

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
  "detect_curve",
  "fit_golden_vs_proxy",
  "fit_law",
  "fit_loglog",
  "fit_power_law",
  "ground_truth",
  "read_curve",
]
