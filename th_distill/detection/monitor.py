"""The hacking detector as a training callback: `HackingMonitor` watches a run's evaluations.

At every evaluation the monitor adds the watched metric (the held-out proxy by default) to a
`detection.Detector`, which is causal: it fires at the same step as `detection.detect` run on the
finished curve. It can stop the run when it fires and keep two checkpoints of the
student's parameters in the run directory:
- `best_golden/` (+ `best_golden.json`): the parameters at the lowest golden metric so far (needs
  the oracle, i.e. the synthetic setup);
- `best_predicted/` (+ `best_predicted.json`): the parameters at the detector's
  `best_predicted_step` (the start of the slowdown it saw, with the default rule). To have them
  when the detector fires later, the parameters of the evaluations that may still become it
  (`Detector.candidate_steps()`) are kept in `candidates/<step>/` until then.

A resumed run rebuilds the monitor from the rows already in `metrics.jsonl`; the checkpoints it
keeps are on disk, so pre-emption loses nothing.

These are plain parameter checkpoints (`checkpoints.save_params`) kept and pruned here rather
than by an Orbax `CheckpointManager`: its `best_fn` / preservation policies keep whole steps as
`<dir>/<step>/<item>/` (not the single `best_golden/` tree readers load), and `best_predicted` is
a step the detector names only when it fires, from candidates no metric ranks.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from th_distill import detection
from th_distill.detection.config import callback_problems, detector_settings
from th_distill.observing.metric_names import DETECTOR_FIRED, DETECTOR_SCORE
from th_distill.partitioning import is_main_process
from th_distill.rundir import checkpoints


@dataclasses.dataclass
class HackingMonitor:
  """Watches `metric` over a run's evaluations (see the module docstring).

  Attributes:
    directory: the run directory (checkpoints it keeps go there).
    metric: the watched curve's name in the metrics rows.
    golden_metric: the name of the golden curve ('best_golden'); ignored if absent from rows.
    settings: the detector's settings.
    on_detect: one of `detector_config.ON_DETECT` ('continue', 'stop').
    keep: a subset of `detector_config.KEEP`.
  """

  directory: str
  metric: str
  golden_metric: str
  settings: detection.DetectorSettings
  on_detect: str = "continue"
  keep: Sequence[str] = ()
  golden: list[float] = dataclasses.field(default_factory=list)
  result: detection.Detection | None = None

  def __post_init__(self):
    self.detector = detection.Detector(self.settings)
    problems = callback_problems(self.on_detect, self.keep)
    if problems:
      raise ValueError("; ".join(problems))

  @classmethod
  def from_config(
    cls,
    section: ml_collections.ConfigDict,
    directory: str,
    golden_metric: str,
    history: Sequence[Mapping[str, Any]] = (),
  ) -> HackingMonitor:
    """A monitor for the `detection` config section, replaying `history` (rows already logged
    by an interrupted run, in step order)."""
    monitor = cls(
      directory,
      section.metric,
      golden_metric,
      detector_settings(section),
      section.on_detect,
      tuple(section.keep),
    )
    for row in history:
      monitor._append(row)
    return monitor

  @property
  def fired(self) -> bool:
    return self.result is not None and self.result.detected

  @property
  def should_stop(self) -> bool:
    return self.fired and self.on_detect == "stop"

  def _append(self, row: Mapping[str, Any]) -> None:
    self.golden.append(float(row.get(self.golden_metric, np.nan)))
    if not self.fired:  # train/* metrics are absent from the row of step 0
      self.detector.add(row["step"], float(row.get(self.metric, np.nan)))
      self.result = self.detector.result()

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _keep_params(self, name: str, step: int, params: Any, **info: Any) -> None:
    checkpoints.save_params(self._path(name), params)  # collective on every process
    if is_main_process():
      checkpoints.write_json(self._path(f"{name}.json"), {"step": step, **info})

  def observe(self, step: int, row: Mapping[str, Any], params: Any) -> dict[str, float]:
    """Takes one evaluation (`row` holds the metrics of `step`; `params` the student's) and
    returns the detector's metrics for that row: DETECTOR_FIRED (`detector/fired`: 0 or 1) and
    DETECTOR_SCORE (`detector/score`: this evaluation's score under the detector's rule,
    `detection.Detection.scores`; left out where it has none and after the detector fired)."""
    already_fired = self.fired
    self._append({**row, "step": step})
    golden = self.golden[-1]
    if "best_golden" in self.keep and np.isfinite(golden) and golden <= np.nanmin(self.golden):
      self._keep_params("best_golden", step, params, golden=golden)
    if "best_predicted" in self.keep and not already_fired:
      self._track_candidates(step, params)
    if self.fired and not already_fired:
      logging.warning("Hacking detector fired at step %d: %s", self.result.step, self.result.reason)
    metrics = {DETECTOR_FIRED: float(self.fired)}
    score = float(self.result.scores[-1])
    if not already_fired and np.isfinite(score):
      metrics[DETECTOR_SCORE] = score
    return metrics

  def _track_candidates(self, step: int, params: Any) -> None:
    candidates = self._path("candidates")
    if self.fired:
      best = self.result.best_predicted_step
      source = os.path.join(candidates, str(best))
      if os.path.isdir(source):
        if is_main_process():
          shutil.rmtree(self._path("best_predicted"), ignore_errors=True)
          os.replace(source, self._path("best_predicted"))
          checkpoints.write_json(
            self._path("best_predicted.json"), {"step": best, "detected_step": self.result.step}
          )
      else:
        logging.warning("No saved parameters of step %d to keep as best_predicted.", best)
      if is_main_process():
        shutil.rmtree(candidates, ignore_errors=True)
      return
    checkpoints.save_params(os.path.join(candidates, str(step)), params)
    if is_main_process():
      keep = {str(s) for s in self.detector.candidate_steps()}
      for name in os.listdir(candidates):
        if name not in keep:
          shutil.rmtree(os.path.join(candidates, name), ignore_errors=True)
