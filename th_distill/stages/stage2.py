"""Stage 2: every regime of the run (`distill.run_regime`), one after another or side by side.

`mesh.regimes_at_once` regimes run at once (`MeshSection.regimes_side_by_side`: 0 = every regime
on a CPU run of one process, else 1), each dispatching its programs from a thread of its own
(`stages.side_by_side`: the same numbers; SIGTERM and Ctrl-C checkpoint every regime; Orbax calls
one at a time). The offline dataset is then sampled once, by the first regime that asks for it
(`training.offline_dataset.load_or_build`), and the run's ETA counts the longest of the regimes when
they all run at once (`RunClock.run_together`).

Several processes (`jax.distributed`) run one regime at a time: their collectives must be
issued in the same order on every process.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from th_distill.config.run_config import RunConfig
from th_distill.observing import progress
from th_distill.planning import workload
from th_distill.rundir.layout import RunDirectory
from th_distill.stages import distill, side_by_side
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
  side_by_side.run_side_by_side(
    [
      functools.partial(distill.run_regime, config, run_dir, regime, programs, stage1, pools, clock)
      for regime in config.regimes
    ],
    at_once,
    "regime",
  )
