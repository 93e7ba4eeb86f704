"""Pre-emption: a SIGTERM (or a pod's pre-emption notice) checkpoints the run and stops it at the
same step on every process; running the same command again resumes it."""

from __future__ import annotations

import signal
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

from th_distill.errors import EX_TEMPFAIL, RunError


class Preempted(RunError):
  """A run stopped for pre-emption after checkpointing at `step`; running the same command
  again resumes it (exit status 75, EX_TEMPFAIL: schedulers retry it)."""

  exit_code = EX_TEMPFAIL

  def __init__(self, what: str, step: int):
    super().__init__(
      f"{what}: pre-empted (SIGTERM); checkpointed at step {step}. Run the same "
      "command again to resume."
    )
    self.step = step


class PreemptionWatch:
  """Tells the training loop when to checkpoint and stop for pre-emption, at the same step on
  every process (`with PreemptionWatch() as watch: ... watch.reached(step)`).

  Several processes (`jax.distributed`): JAX's pre-emption service, whose coordination agent
  learns of a SIGTERM sent to any process and agrees on a step every process then reaches
  (`multihost_utils.reached_preemption_sync_point`; nothing is exchanged on other steps). Every
  process must call `reached` at every step of the loop. One process: SIGTERM is recorded
  instead of killing the process, while the watch is active.
  """

  def __init__(self):
    self._sigterm = False
    self._previous: Any = None
    self._service = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if not self._service:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM received: checkpointing after this step.")
    self._sigterm = True

  def reached(self, step: int) -> bool:
    """Whether to checkpoint at `step` and stop."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._sigterm

  def __exit__(self, *exc) -> None:
    if not self._service:
      signal.signal(signal.SIGTERM, self._previous)
