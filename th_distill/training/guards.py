"""Guards of the training loop: non-finite steps and a stalled gradient.

- `StepWatch` checks every step's loss and gradient norm on the host (the training loop hands it
  each step's metrics one step late, so the devices never wait for it): a non-finite value stops
  the run with `NonFiniteStep`, naming the step, the values and the last good checkpoint (the
  poisoned state is never saved), as t5x's TerminateOnNan does, or, with
  `on_nonfinite = 'skip'`, the step is skipped: `skip_nonfinite` keeps the parameters and
  optimiser state inside the jitted step.

`optax.apply_if_finite` is not used for the skip: it checks the updates, not the loss (finite
gradients can overflow the loss or the norm), advances nothing but its own counters, and wrapping
the optimiser in its `lax.cond` changes the finite steps' results by an ulp or two on CPU (XLA
fuses the update differently), so every run's numbers would move; `skip_nonfinite` changes
nothing under `on_nonfinite = 'stop'`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from th_distill.errors import RunError
from th_distill.rundir import checkpoints
from th_distill.training.steps import TrainState


class NonFiniteStep(RunError):
  """Training gave a non-finite loss or gradient norm: a distillation or SFT step (with
  `on_nonfinite = 'stop'`, or 100 skipped in a row)."""


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

  def check_steps(
    self,
    first: int,
    count: int,
    metrics: dict[str, Any],
    checkpointer: checkpoints.RunCheckpointer,
  ) -> None:
    """`check` of steps first .. first + count - 1, whose metrics are stacked [K] (one
    dispatch of several steps: th_distill.training.dispatch)."""
    values = jax.device_get({name: metrics[name] for name in (self.loss, self.grad_norm)})
    for row in range(count):
      self.check(first + row, {name: value[row] for name, value in values.items()}, checkpointer)


def _last_good(checkpointer: checkpoints.RunCheckpointer) -> str:
  step = checkpointer.latest_step()
  if step is None:
    return "No checkpoint was written yet (a rerun starts from step 0)."
  return f"The last good checkpoint, step {step}, is kept in {checkpointer.directory}."


def skip_nonfinite(
  step_fn: Callable[..., Any],
  on_nonfinite: str,
  loss: str = "train/loss",
  grad_norm: str = "train/grad_norm",
) -> Callable[..., Any]:
  """`step_fn` (state, ...) -> (state, metrics); with `on_nonfinite = 'skip'`, a step whose
  metrics `loss` or `grad_norm` is not finite keeps the parameters and optimiser state (the step
  counter still advances, so the data order is unchanged)."""
  if on_nonfinite != "skip":
    return step_fn

  def guarded(state: TrainState, *args: Any) -> tuple[TrainState, Any]:
    new, metrics = step_fn(state, *args)
    finite = jnp.isfinite(metrics[loss]) & jnp.isfinite(metrics[grad_norm])
    params, opt_state = jax.tree_util.tree_map(
      lambda n, o: jnp.where(finite, n, o),
      (new.params, new.opt_state),
      (state.params, state.opt_state),
    )
    return new.replace(params=params, opt_state=opt_state), metrics

  return guarded
