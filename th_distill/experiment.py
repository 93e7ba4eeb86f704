"""The whole experiment, top-down: what `python -m th_distill.main` runs.

Reading order: validate the config, lock the workdir (`workdir_lock`), check that its results
were made with this config (`resume.check_workdir`), write it, build the prompt pools, stage 1
(oracle -> oracle data -> teacher SFT, student init), stage 2 (one distillation run per regime),
then the report (summary.json, plots, report.md). Every stage is cached in the workdir, so running
the same command again resumes where it stopped. Importable without the CLI:

  from th_distill import experiment
  from th_distill.config import base_config
  summary = experiment.run(base_config(), "/tmp/th")
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from th_distill import (checkpoints, config as config_lib, partitioning, pipeline, report, resume,
                        workdir_lock)


def run(config: ml_collections.ConfigDict, workdir: str,
        stage1_dir: str | None = None) -> dict[str, Any]:
  """Runs every stage; returns the summary (also written to WORKDIR/summary.json).

  `stage1_dir` (default WORKDIR/stage1) caches stage 1; runs that differ only in stage-2 settings
  may share it (its fingerprint check refuses a directory built by another stage-1 config).

  Multi-host: every process runs this (after `partitioning.initialize_distributed()`); process 0
  holds the workdir's lock and writes the config, metrics and report. Raises
  `pipeline.Preempted` after SIGTERM, and a `th_distill.errors.RunError` for a bad config, a
  workdir in use or holding another config's results, or a non-finite training step.
  """
  config_lib.validate(config)
  with workdir_lock.hold(workdir):
    return _run(config, workdir, stage1_dir or os.path.join(workdir, "stage1"))


def _run(config: ml_collections.ConfigDict, workdir: str, stage1_dir: str) -> dict[str, Any]:
  """`run`, with the workdir locked."""
  main = partitioning.is_main_process()
  resume.check_workdir(config, workdir, stage1_dir)
  if main:
    checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  start = time.time()

  partitioner = partitioning.Partitioner.from_config(config.mesh)
  logging.info("Mesh %s over %d device(s) in %d process(es)", dict(partitioner.mesh.shape),
               partitioner.mesh.size, jax.process_count())
  models = pipeline.Models.from_config(config)
  pools = pipeline.prompt_pools(config)
  stage1 = pipeline.run_stage1(config, stage1_dir, models, pools, partitioner)
  for regime in config.regimes:
    pipeline.run_regime(config, workdir, regime, models, stage1, pools, partitioner)
  if not main:
    return {}

  summary = report.write_report(workdir, config, stage1.info)
  for regime, s in summary["regimes"].items():
    logging.info("%-15s golden min %.4f @ %d, final %.4f (%+.1f%%), hacking: %s, detector: %s",
                 regime, s["golden_min"], s["golden_min_step"], s["golden_final"],
                 s["golden_rise_pct"], s["hacking"],
                 f"fired @ {s['detected_step']}" if s["detected"] else "silent")
  logging.info("Done in %.0fs; report in %s", time.time() - start,
               os.path.join(workdir, "report.md"))
  return summary
