"""Pre-emption: a SIGTERM (or a pod's pre-emption notice) checkpoints the run and stops it at the
same step on every process; running the same command again resumes it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import jax
from absl import logging
from jax.experimental import multihost_utils

from th_distill.errors import EX_TEMPFAIL, RunError


class Preempted(RunError):
  """A run stopped for pre-emption after checkpointing at `step`; running the same command
  again resumes it (exit status 75, EX_TEMPFAIL: schedulers retry it)."""

  exit_code = EX_TEMPFAIL

  def __init__(self, what: str, step: int | None):
    super().__init__(
      f"{what}: pre-empted (SIGTERM); checkpointed at step {step}. Run the same "
      "command again to resume."
      if step is not None
      else f"{what}: pre-empted (SIGTERM) before this phase's results were saved. Run the same "
      "command again: it redoes this phase (its samples are a function of the seed) and goes on."
    )
    self.step = step


_received = False  # whether SIGTERM came while it was being recorded (`_record`)


def _record(signum, frame) -> None:
  del signum, frame
  global _received
  logging.warning(
    "SIGTERM received again: already stopping."
    if _received
    else "SIGTERM received: stopping at the next training step (checkpointed there) or, in a "
    "phase that only samples, at its next sampler call."
  )
  _received = True


def stop_at_next_step() -> None:
  """Every training loop of this process under a watch checkpoints at its next step and stops
  (`Preempted`), as after SIGTERM (one process; `stages.stage2` on Ctrl-C)."""
  global _received
  _received = True


def record_sigterm() -> None:
  """Records SIGTERM for the rest of the process instead of dying of it (a command line of one
  process, `cli.run_command`): whenever it comes, and however many times, the run checkpoints at
  its next training step and stops with `Preempted` (status 75)."""
  signal.signal(signal.SIGTERM, _record)


Fn = TypeVar("Fn", bound=Callable[..., Any])


def stopping_between_calls(fn: Fn, what: str) -> Fn:
  """`fn` that first raises `Preempted(what, None)` once SIGTERM was recorded (one process under
  `record_sigterm`): a phase of sampling calls without training steps (stage 1's oracle
  calibration, oracle data and evaluation sets; a regime's offline dataset) stops at its next
  call instead of running to its end, before a scheduler's grace period runs out. Nothing of the
  phase is kept; its outputs are functions of the seed, so the same command rebuilds them."""

  def checked(*args, **kwargs):
    if _received:
      raise Preempted(what, None)
    return fn(*args, **kwargs)

  return checked  # type: ignore[return-value]


class PreemptionWatch:
  """Tells the training loop when to checkpoint and stop for pre-emption, at the same step on
  every process (`with PreemptionWatch() as watch: ... watch.reached(step)`).

  Several processes (`jax.distributed`): JAX's pre-emption service, whose coordination agent
  learns of a SIGTERM sent to any process and agrees on a step every process then reaches
  (`multihost_utils.reached_preemption_sync_point`; nothing is exchanged on other steps). Every
  process must call `reached` at every step of the loop. One process: SIGTERM is recorded
  instead of killing the process, while the watch is active (for the whole command under
  `record_sigterm`, so a SIGTERM between training loops stops the next one, and a second SIGTERM
  while the run stops is recorded too). Only the main thread can take a signal: a watch entered
  in another thread installs nothing and reads what the main thread's watch (`stages.stage2`
  holds one while regimes run side by side) or `record_sigterm` records.
  """

  def __init__(self):
    self._previous: Any = None
    self._installed = False
    self._service = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    global _received
    if (
      not self._service
      and threading.current_thread() is threading.main_thread()  # (signals: the main thread's)
      and signal.getsignal(signal.SIGTERM) is not _record
    ):
      _received = False  # outside `record_sigterm`, SIGTERMs before the watch are not recorded
      self._previous = signal.signal(signal.SIGTERM, _record)
      self._installed = True
    return self

  def reached(self, step: int) -> bool:
    """Whether to checkpoint at `step` and stop."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return _received

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
