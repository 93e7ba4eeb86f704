"""Guards of the distillation loop: non-finite steps, a stalled gradient, lost metric rows.

- `StepWatch` checks every step's loss and gradient norm on the host (the training loop hands it
  each step's metrics one step late, so the devices never wait for it): a non-finite value stops
  the run with `NonFiniteStep`, naming the step, the values and the last good checkpoint (the
  state is never saved after it), as t5x's TerminateOnNan does, or, with
  `on_nonfinite = 'skip'`, the step is reported skipped. On the devices such a step is always
  skipped, whatever `on_nonfinite` says: the optimiser (`steps.make_optimizer`) keeps the
  parameters and Adam's state through `optax.apply_if_finite`.
- `check_rows` refuses to resume or report a run whose `metrics.jsonl` lost rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from th_distill.errors import RunError
from th_distill.observing.metrics_io import MetricsLost, read_metrics
from th_distill.rundir import checkpoints


class NonFiniteStep(RunError):
  """Training gave a non-finite loss or gradient norm: a distillation step (with
  `on_nonfinite = 'stop'`, or 100 skipped in a row), or the end of a teacher or student SFT."""


class StepWatch:
  """Checks each distillation step's loss and gradient norm on the host: a non-finite one
  raises NonFiniteStep (`on_nonfinite = 'stop'`) or is skipped with a warning ('skip'; after
  IN_A_ROW skipped steps in a row the run stops all the same: the parameters themselves have
  diverged). A gradient norm of 0 for IN_A_ROW steps in a row is warned about once (training
  has stalled, as a much too large learning rate does)."""

  IN_A_ROW = 100

  def __init__(
    self,
    regime: str,
    on_nonfinite: str,
    *,
    loss: str = "train/loss",
    grad_norm: str = "train/grad_norm",
    fix: str = "lower student.learning_rate or set student.grad_clip",
  ):
    """`regime` titles the messages (a regime, or e.g. 'teacher SFT'); `loss` and `grad_norm`
    name the metrics checked; `fix` is the advice the messages end with."""
    self.regime, self.on_nonfinite = regime, on_nonfinite
    self.loss, self.grad_norm, self.fix = loss, grad_norm, fix
    self.zero_since: int | None = None
    self.skipped_since: int | None = None
    self.warned = False

  def check(
    self, step: int, metrics: dict[str, Any], checkpointer: checkpoints.RunCheckpointer
  ) -> None:
    """Checks one step's metrics (a skipped step is also left out of the logged averages, by the
    training loop)."""
    loss, grad_norm = float(metrics[self.loss]), float(metrics[self.grad_norm])
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      if self.skipped_since is None:
        self.skipped_since = step
      if self.on_nonfinite == "stop":
        raise NonFiniteStep(
          f"{self.regime}: training step {step} gave loss {loss} and gradient norm "
          f"{grad_norm}; stopped (on_nonfinite = 'stop'). {_last_good(checkpointer)} "
          f"{self.fix.capitalize()} (in a new --workdir), or rerun "
          "with --config.on_nonfinite=skip to skip such steps"
        )
      if step - self.skipped_since + 1 >= self.IN_A_ROW:
        raise NonFiniteStep(
          f"{self.regime}: every training step from {self.skipped_since} to {step} was "
          "non-finite and skipped: the parameters have diverged, skipping cannot "
          f"recover. {_last_good(checkpointer)} {self.fix.capitalize()} (in a new --workdir)"
        )
      logging.warning(
        "%s: step %d skipped (loss %s, gradient norm %s; on_nonfinite = 'skip').",
        self.regime,
        step,
        loss,
        grad_norm,
      )
      return
    self.skipped_since = None
    if grad_norm != 0.0:
      self.zero_since = None
    elif self.zero_since is None:
      self.zero_since = step
    if (
      not self.warned
      and self.zero_since is not None
      and step - self.zero_since + 1 >= self.IN_A_ROW
    ):
      self.warned = True
      logging.warning(
        "%s: the gradient norm has been 0 since step %d: training has stalled "
        "(a learning rate much too large can collapse the student).",
        self.regime,
        self.zero_since,
      )


def _last_good(checkpointer: checkpoints.RunCheckpointer) -> str:
  step = checkpointer.latest_step()
  if step is None:
    return "No checkpoint was written yet (a rerun starts from step 0)."
  return f"The last good checkpoint, step {step}, is kept in {checkpointer.directory}."


def check_rows(path: str, steps: set[int], fix: str) -> None:
  """Raises MetricsLost if `metrics.jsonl` at `path` lacks the row of one of `steps`."""
  missing = sorted(steps - {row["step"] for row in read_metrics(path)})
  if missing:
    raise MetricsLost(
      f"{path} lacks the rows of {len(missing)} evaluation(s) (steps "
      f"{missing[0]}..{missing[-1]}): it was deleted or cut short, and the "
      f"run cannot be reported on; {fix}"
    )
