"""The parts a `th_distill.training.distiller.Distiller` attaches to its `Trainer`: the run's
rows (`RunRows`: kept, and written to the workdir), a user's function every so many steps
(`EveryHook`), the evaluation it was given (`Evaluation`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from th_distill.observing.metrics_io import METRICS_FILE, MetricsWriter, check_rows, read_metrics
from th_distill.partitioning import is_main_process
from th_distill.training.hooks import Evaluate
from th_distill.training.trainer import Hook, Trainer


class RunRows:
  """The rows of a run: kept here (`rows`) and, with a `MetricsWriter`, written."""

  def __init__(self, history: list[dict[str, float]], writer: MetricsWriter | None):
    self.rows, self.writer = list(history), writer

  def write(self, step: int, row: Mapping[str, Any]) -> None:
    self.rows.append({"step": int(step), **{k: float(v) for k, v in sorted(row.items())}})
    if self.writer is not None:
      self.writer.write(step, row)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()

  @classmethod
  def open(cls, workdir: str | None, start: int, schedule: Any) -> RunRows:
    """The rows of a run starting at `start`: those logged before it (checked complete against
    `schedule`, an `EvaluationSchedule`) and, with a workdir, the writer of the rows from `start`
    on."""
    if workdir is None:
      return cls([], None)
    path = os.path.join(workdir, METRICS_FILE)
    check_rows(path, schedule.upto(start - 1), f"delete {workdir} to run again from step 0")
    writer = MetricsWriter(workdir, resume_step=start, enabled=is_main_process())
    return cls([row for row in read_metrics(path) if row["step"] < start], writer)


class EveryHook(Hook):
  """`fn(step, student_params, metrics)` at the top of every `every`-th step (step > 0):
  `metrics` are the last step's training metrics as floats."""

  def __init__(self, fn: Callable[[int, Any, dict[str, float]], None], every: int):
    self.fn, self.every = fn, every

  def starts_dispatch(self, step: int) -> bool:
    return step % self.every == 0

  def before_step(self, trainer: Trainer, step: int) -> None:
    if step > 0 and step % self.every == 0:
      metrics = {k: float(v) for k, v in jax.device_get(trainer.last_metrics).items()}
      self.fn(step, trainer.params, metrics)


@dataclasses.dataclass
class Evaluation:
  """An evaluation of the run: `evaluate(student_params, step) -> row` at the steps of
  `schedule(steps)`; `proxy` and `golden` name its headline metrics (`line`: for progress lines)."""

  evaluate: Evaluate
  schedule: Callable[[int], Any]  # steps -> evaluation steps (`EvaluationSchedule`-like)
  proxy: str
  golden: str | None

  def line(self, row: Mapping[str, float]) -> str:
    golden = f", golden {row[self.golden]:.4f}" if self.golden in row else ""
    return f"{golden} proxy {row[self.proxy]:.4f}" if golden else f", proxy {row[self.proxy]:.4f}"


@contextlib.contextmanager
def checkpoint_folder(workdir: str | None) -> Iterator[str]:
  """WORKDIR/checkpoints, or a temporary folder removed after the run (no workdir)."""
  if workdir is not None:
    yield os.path.join(workdir, "checkpoints")
    return
  with tempfile.TemporaryDirectory(prefix="th_distill_") as directory:
    yield os.path.join(directory, "checkpoints")
