"""The behaviours the stages attach to their `Trainer`: evaluation and metric rows, the hacking
detector's action, progress lines.

- `EvaluationHook`: at the evaluation steps, waits for the dispatched steps, evaluates the
  student, adds the training means since the last row, lets each `RowAction` add to the row
  (and act on it), writes the row (`metrics.jsonl`, TensorBoard) and a progress line.
- `DetectorAction`: a `RowAction` running the hacking monitor; it keeps the parameters the run
  keeps and, with `on_detect = 'stop'`, stops the run.
- `ProgressHook`: counts each step in a progress phase (with a detail for its lines).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from th_distill.detection.monitor import HackingMonitor
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
  """Advances `item` of `phase` after each step; `detail(trainer)` adds to its lines (read only
  when a line is printed, so it may wait for the step)."""

  def __init__(self, phase: Phase, item: str, detail: Callable[[Trainer], str] | None = None):
    self.phase, self.item, self.detail = phase, item, detail

  def after_step(self, trainer: Trainer, step: int) -> None:
    detail = self.detail
    self.phase.advance(self.item, detail=(lambda: detail(trainer)) if detail else None)
