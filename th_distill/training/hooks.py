"""The behaviours the stages attach to their `Trainer`: evaluation and metric rows, the hacking
detector's action, progress lines.

- `EvaluationHook`: at the evaluation steps, waits for the dispatched steps, evaluates the
  student, adds the training means since the last row, lets each `RowAction` add to the row
  (and act on it), writes the row (`metrics.jsonl`, TensorBoard) and a progress line.
- `DetectorAction`: a `RowAction` running the hacking monitor; it keeps the parameters the run
  keeps and, with `on_detect = 'stop'`, stops the run.
- `RefreshAction`: with `on_detect = 'refresh'`, rolls the student back to its kept
  `best_predicted` parameters when the detector fires and switches its data to fresh teacher
  samples.
- `ProgressHook`: counts the steps in a progress phase (with a detail for its lines).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from absl import logging

from th_distill.detection.monitor import HackingMonitor
from th_distill.observing.metric_names import DETECTOR_REFRESHED
from th_distill.observing.metrics_io import MetricsWriter
from th_distill.observing.progress import Phase
from th_distill.rundir.kept import KeptParameters
from th_distill.training.trainer import Hook, Trainer

# evaluate(student_params, step) -> {metric name: value}
Evaluate = Callable[[Any, int], dict[str, float]]


class RowAction:
  """Reads an evaluation row before it is written; returns metrics to add to it, and may act
  on the trainer (`request_stop`)."""

  def __call__(self, trainer: Trainer, step: int, row: Mapping[str, float]) -> dict[str, float]:
    raise NotImplementedError


class DetectorAction(RowAction):
  """The hacking monitor on each row: its metrics, the kept parameters, the stop it asks."""

  def __init__(self, monitor: HackingMonitor, kept: KeptParameters):
    self.monitor, self.kept = monitor, kept

  def observe(self, step: int, row: Mapping[str, float], params: Any) -> dict[str, float]:
    """The monitor's metrics for the row of `step`, after keeping what it makes best of the
    student's `params`."""
    fired_before = self.monitor.fired
    metrics = self.monitor.observe(step, row)
    self.kept.observe(step, params, self.monitor, fired_before)
    return metrics

  def __call__(self, trainer: Trainer, step: int, row: Mapping[str, float]) -> dict[str, float]:
    metrics = self.observe(step, row, trainer.params)
    if self.monitor.should_stop:
      trainer.request_stop("the hacking detector (detection.on_detect = 'stop')")
    return metrics


class RefreshAction(RowAction):
  """With `detection.on_detect = 'refresh'`: at the evaluation where the monitor fires, the
  student goes back to the parameters the run kept as `best_predicted` (`restore(params) ->
  params`) and its batches come from fresh teacher samples from that step on (`refresh(step)`);
  adds DETECTOR_REFRESHED (1 from that row on) to every row. `refreshed_at`: the step of a
  refresh made before a resume (the source was already switched), else None."""

  def __init__(
    self,
    monitor: HackingMonitor,
    restore: Callable[[Any], Any],
    refresh: Callable[[int], None],
    refreshed_at: int | None = None,
  ):
    self.monitor, self.restore, self.refresh = monitor, restore, refresh
    self.refreshed_at = refreshed_at

  def __call__(self, trainer: Trainer, step: int, row: Mapping[str, float]) -> dict[str, float]:
    if self.refreshed_at is None and self.monitor.fired:
      trainer.replace_params(self.restore(trainer.params))
      self.refresh(step)
      self.refreshed_at = step
      logging.warning(
        "Refreshed at step %d: back to the parameters of step %d (best_predicted), fresh "
        "teacher samples from now on.",
        step,
        self.monitor.result.best_predicted_step,
      )
    return {DETECTOR_REFRESHED: float(self.refreshed_at is not None)}


class EvaluationHook(Hook):
  """Evaluates at `steps` and writes the rows (see the module docstring); `line(row)` is the
  progress line's detail."""

  def __init__(
    self,
    steps: Container[int],
    evaluate: Evaluate,
    writer: MetricsWriter,
    phase: Phase,
    line: Callable[[Mapping[str, float]], str],
    actions: Iterable[RowAction] = (),
  ):
    self.steps, self.evaluate, self.writer = steps, evaluate, writer
    self.phase, self.line, self.actions = phase, line, list(actions)

  def starts_dispatch(self, step: int) -> bool:
    return step in self.steps

  def before_step(self, trainer: Trainer, step: int) -> None:
    if step not in self.steps:
      return
    trainer.pause()
    row = dict(self.evaluate(trainer.params, step))
    row.update(trainer.training_means())
    for action in self.actions:
      row.update(action(trainer, step, row))
    self.writer.write(step, row)
    trainer.resume()
    self.phase.advance("evaluations")
    self.phase.log_line(self.line(row))

  def close(self, trainer: Trainer, step: int) -> None:
    self.writer.close()


class ProgressHook(Hook):
  """Advances `item` of `phase` by the steps of each dispatch; `detail(trainer)` adds to its
  lines (read only when a line is printed, so it may wait for the step)."""

  def __init__(self, phase: Phase, item: str, detail: Callable[[Trainer], str] | None = None):
    self.phase, self.item, self.detail = phase, item, detail

  def after_steps(self, trainer: Trainer, first: int, count: int) -> None:
    detail = self.detail
    self.phase.advance(self.item, count, detail=(lambda: detail(trainer)) if detail else None)
