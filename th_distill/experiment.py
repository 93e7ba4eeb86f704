"""The whole experiment, top-down: what `python -m th_distill.main` runs.

Reading order: check the config and read it into its typed form (`config.validate` ->
`RunConfig`), lock the workdir (`rundir.lock`), check that its results were made with this
config (`RunDirectory.check_config`) and record it, log the plan (devices, mesh, parameter
counts, memory per device, each phase's work and a first time estimate; `planning.preview`),
build the prompt pools, stage 1 (oracle -> oracle data -> teacher SFT, student init), stage 2
(`stages.stage2`: one distillation run per regime, each from its batch source, side by side on a
CPU), then the report (summary.json, plots, report.md). Every stage is cached in the workdir, so
running the same command again resumes where it stopped. Importable without the CLI:

  from th_distill import experiment
  from th_distill.config import base_config
  summary = experiment.run(base_config(), "/tmp/th")
"""

from __future__ import annotations

import time
from typing import Any

import ml_collections
from absl import logging

from th_distill import config as config_lib
from th_distill import partitioning
from th_distill.data.pools import prompt_pools
from th_distill.observing import progress
from th_distill.planning.preview import log_plan, run_layout
from th_distill.results import report
from th_distill.rundir import devices, lock
from th_distill.rundir.layout import RunDirectory
from th_distill.stages import stage1 as stage1_lib
from th_distill.stages import stage2
from th_distill.training import sources
from th_distill.training.program_builders import Models
from th_distill.training.programs import Programs


def run(
  config: ml_collections.ConfigDict, workdir: str, stage1_dir: str | None = None
) -> dict[str, Any]:
  """Runs every stage; returns the summary (also written to WORKDIR/summary.json).

  `stage1_dir` (default WORKDIR/stage1) caches stage 1; runs that differ only in stage-2 settings
  may share it (its fingerprint check refuses a directory built by another stage-1 config).

  Multi-host: every process runs this (after `partitioning.initialize_distributed()`); process 0
  holds the workdir's lock and writes the config, metrics and report. Raises
  `rundir.preemption.Preempted` after SIGTERM, and a `th_distill.errors.RunError` for a bad
  config, a workdir in use or holding another config's results, or a non-finite training step.

  Logs its plan and progress lines (absl INFO) also when called from Python; a caller's own
  absl verbosity is kept: `absl.logging.set_verbosity(absl.logging.WARNING)` silences them.
  """
  run_config = config_lib.validate(config)
  with lock.hold(workdir), progress.shown():
    return _run(run_config, RunDirectory(workdir, stage1_dir))


def _run(config: config_lib.RunConfig, run_dir: RunDirectory) -> dict[str, Any]:
  """`run`, with the workdir locked."""
  main = partitioning.is_main_process()
  run_dir.check_config(config, tuple(sources.REGIMES))
  if main:
    run_dir.write_config(config)
  start = time.time()

  partitioner = partitioning.Partitioner.from_config(config.mesh)
  devices.check(
    run_dir, config.regimes, devices.describe(partitioner.platform, partitioner.mesh.devices.shape)
  )
  models = Models.from_config(config)
  layout = run_layout(config, partitioner)  # the samplers' and evaluator's calls fit a device
  programs = Programs(models, config.program_settings, partitioner, layout)
  clock = log_plan(config, run_dir, partitioner, models, layout)
  pools = prompt_pools(config)
  stage1 = stage1_lib.run(config, run_dir.stage1, programs, pools, clock)
  stage2.run(config, run_dir, programs, stage1, pools, clock)
  if not main:
    return {}

  summary = report.write_report(run_dir.path, config, stage1.info)
  for regime, s in summary["regimes"].items():
    logging.info(  # numbers are None where no evaluation was finite (`report.number`: '–')
      "%-15s golden %s -> min %s @ %s -> final %s (%s%%, trend %s/doubling), "
      "outcome: %s, detector: %s",
      regime,
      report.number(s["golden_start"]),
      report.number(s["golden_min"]),
      s["golden_min_step"],
      report.number(s["golden_final"]),
      report.number(s["golden_rise_pct"], "+.1f"),
      report.trend_text(s),
      s["outcome"],
      f"fired @ {s['detected_step']}" if s["detected"] else "silent",
    )
  logging.info("Done in %.0fs; report in %s", time.time() - start, run_dir.report)
  return summary
