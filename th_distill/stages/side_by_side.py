"""Independent trainings side by side, a thread each: stage 1's teacher and student SFTs and
stage 2's regimes on a CPU run of one process (`MeshSection.regimes_side_by_side`).

On a CPU one training stream keeps about one core busy (its step is a chain of small matmuls),
so two or more at once use the machine better (docs/benchmarks.md measures it). Each task
computes exactly what it computes alone: the same programs on the same inputs, its own batches,
keys and checkpoints; only the time changes. While tasks run side by side:

- Orbax calls run one at a time and saves synchronously
  (`rundir.checkpoints.one_orbax_call_at_a_time`: asynchronous saves of several threads
  collide);
- SIGTERM is recorded by the main thread, and every task checkpoints at its next step and
  stops; `Preempted` (or another error) is raised once every task has stopped, the first in
  task order; a task that fails does not stop the others, which run to their end;
- Ctrl-C (KeyboardInterrupt) stops every task as SIGTERM does (checkpointed), then is raised.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TypeVar

from th_distill.rundir import checkpoints, preemption

T = TypeVar("T")


def run_side_by_side(tasks: Sequence[Callable[[], T]], at_once: int, name: str) -> list[T]:
  """Runs `tasks` (callables without arguments), at most `at_once` at a time, each in a thread
  named `name`-N; returns their results in task order, or raises the first error in that
  order once every task has stopped (see the module docstring)."""
  with (
    preemption.PreemptionWatch(),
    checkpoints.one_orbax_call_at_a_time(),
    concurrent.futures.ThreadPoolExecutor(at_once, thread_name_prefix=name) as pool,
  ):
    futures = [pool.submit(task) for task in tasks]
    try:
      concurrent.futures.wait(futures)
    except KeyboardInterrupt:
      preemption.stop_at_next_step()  # every task checkpoints and stops; then the interrupt
      raise
  return [future.result() for future in futures]
