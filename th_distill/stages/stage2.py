"""Stage 2: every regime of the run (`distill.run_regime`), one after another or side by side.

On a CPU one regime's training keeps about one core busy (the step is a chain of small
matmuls), so `mesh.regimes_at_once` regimes run at once, each dispatching its programs from a
thread of its own (0 = every regime on a CPU run of one process, else 1; docs/benchmarks.md
measures it). Each regime computes exactly what it computes alone: the same programs on the
same inputs, its own batches, keys and checkpoints; only the time changes. Side by side:

- Orbax calls run one at a time and saves synchronously
  (`rundir.checkpoints.one_orbax_call_at_a_time`: asynchronous saves of several threads
  collide);
- the offline dataset is sampled once, by the first regime that asks for it
  (`data.offline_dataset.load_or_build`);
- SIGTERM is recorded by the main thread for the whole stage, and every regime checkpoints at
  its next step and stops; `Preempted` (or another error) is raised once every regime has
  stopped, the first in `regimes` order; a regime that fails does not stop the others, which run
  to their end;
- Ctrl-C (KeyboardInterrupt) stops every regime as SIGTERM does (checkpointed), then is raised;
- the run's ETA counts the longest of the regimes still running when they all run at once
  (`RunClock.run_together`).

Several processes (`jax.distributed`) run one regime at a time: their collectives must be
issued in the same order on every process.
"""

from __future__ import annotations

import concurrent.futures

import jax
import numpy as np

from th_distill.config.run_config import RunConfig
from th_distill.observing import progress
from th_distill.planning import workload
from th_distill.rundir import checkpoints, preemption
from th_distill.rundir.layout import RunDirectory
from th_distill.stages import distill
from th_distill.stages.stage1 import Stage1
from th_distill.training.programs import Programs


def run(
  config: RunConfig,
  run_dir: RunDirectory,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, np.ndarray],
  clock: progress.RunClock,
) -> None:
  """Runs `config.regimes` (see the module docstring); raises what `distill.run_regime` raises."""
  at_once = config.mesh.regimes_side_by_side(
    len(config.regimes), programs.partitioner.platform, jax.process_count()
  )
  if at_once == 1:
    for regime in config.regimes:
      distill.run_regime(config, run_dir, regime, programs, stage1, pools, clock)
    return
  if at_once == len(config.regimes):
    clock.run_together([workload.regime_key(r) for r in config.regimes])
  with (
    preemption.PreemptionWatch(),
    checkpoints.one_orbax_call_at_a_time(),
    concurrent.futures.ThreadPoolExecutor(at_once, thread_name_prefix="regime") as pool,
  ):
    futures = [
      pool.submit(distill.run_regime, config, run_dir, regime, programs, stage1, pools, clock)
      for regime in config.regimes
    ]
    try:
      concurrent.futures.wait(futures)
    except KeyboardInterrupt:
      preemption.stop_at_next_step()  # every regime checkpoints and stops; then the interrupt
      raise
  for future in futures:
    future.result()  # the first error, in regime order
