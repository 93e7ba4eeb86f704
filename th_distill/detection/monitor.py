"""The hacking detector during training: `HackingMonitor` watches a run's evaluations.

At every evaluation the monitor adds the watched metric (the held-out proxy by default) to a
`detection.Detector`, which is causal: it fires at the same step as `detection.detect` run on the
finished curve. It returns the detector's metrics for the row and says whether the run should
stop (`detection.on_detect = 'stop'`; 'refresh' is `training.hooks.RefreshAction`'s); what the run keeps of the student's parameters is
`rundir.kept.KeptParameters`', and the training loop's action that joins them is
`training.hooks.DetectorAction`. A resumed run rebuilds the monitor from the rows already in
`metrics.jsonl` (`history`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from th_distill import detection
from th_distill.detection.config import callback_problems
from th_distill.observing.metric_names import DETECTOR_FIRED, DETECTOR_SCORE


@dataclasses.dataclass
class HackingMonitor:
  """Watches `metric` over a run's evaluations (see the module docstring).

  Attributes:
    metric: the watched curve's name in the metrics rows.
    golden_metric: the name of the golden curve (its history is `golden`; NaN where absent).
    settings: the detector's settings.
    on_detect: one of `detection.config.ON_DETECT` ('continue', 'stop', 'refresh': acted on by
      `training.hooks.RefreshAction`).
  """

  metric: str
  golden_metric: str
  settings: detection.DetectorSettings
  on_detect: str = "continue"
  golden: list[float] = dataclasses.field(default_factory=list)
  result: detection.Detection | None = None

  def __post_init__(self):
    self.detector = detection.Detector(self.settings)
    problems = callback_problems(self.on_detect, ())
    if problems:
      raise ValueError("; ".join(problems))

  @classmethod
  def replay(
    cls,
    metric: str,
    golden_metric: str,
    settings: detection.DetectorSettings,
    on_detect: str,
    history: Sequence[Mapping[str, Any]] = (),
  ) -> HackingMonitor:
    """A monitor that has seen `history` (rows already logged by an interrupted run, in step
    order)."""
    monitor = cls(metric, golden_metric, settings, on_detect)
    for row in history:
      monitor._append(row)
    return monitor

  @property
  def fired(self) -> bool:
    return self.result is not None and self.result.detected

  @property
  def should_stop(self) -> bool:
    return self.fired and self.on_detect == "stop"

  def candidate_steps(self) -> list[int]:
    """The evaluations that may still become the detector's `best_predicted_step`."""
    return list(self.detector.candidate_steps())

  def _append(self, row: Mapping[str, Any]) -> None:
    self.golden.append(float(row.get(self.golden_metric, np.nan)))
    if not self.fired:  # train/* metrics are absent from the row of step 0
      self.detector.add(row["step"], float(row.get(self.metric, np.nan)))
      self.result = self.detector.result()

  def observe(self, step: int, row: Mapping[str, Any]) -> dict[str, float]:
    """Takes one evaluation (`row` holds the metrics of `step`) and returns the detector's
    metrics for that row: DETECTOR_FIRED (`detector/fired`: 0 or 1) and DETECTOR_SCORE
    (`detector/score`: this evaluation's score under the detector's rule,
    `detection.Detection.scores`; left out where it has none and after the detector fired)."""
    already_fired = self.fired
    self._append({**row, "step": step})
    if self.fired and not already_fired:
      logging.warning("Hacking detector fired at step %d: %s", self.result.step, self.result.reason)
    metrics = {DETECTOR_FIRED: float(self.fired)}
    score = float(self.result.scores[-1])
    if not already_fired and np.isfinite(score):
      metrics[DETECTOR_SCORE] = score
    return metrics
