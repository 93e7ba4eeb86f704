"""The whole experiment, top-down: what `python -m th_distill.main` runs.

Reading order: validate the config, lock the workdir (`workdir_lock`), check that its results
were made with this config (`resume.check_workdir`), write it, log the plan (devices, mesh,
parameter counts, memory per device, each phase's work and a first time estimate; `plan`), build
the prompt pools, stage 1
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

from th_distill import config as config_lib
from th_distill import partitioning
from th_distill.config.settings import RunSettings
from th_distill.data.pools import prompt_pools
from th_distill.models import param_count
from th_distill.observing import progress
from th_distill.planning import memory, workload
from th_distill.results import report
from th_distill.rundir import checkpoints, resume
from th_distill.rundir import lock as workdir_lock
from th_distill.rundir import records as workdir_lib
from th_distill.stages import distill
from th_distill.stages import stage1 as stage1_lib
from th_distill.training.programs import Models, Programs


def run(
  config: ml_collections.ConfigDict, workdir: str, stage1_dir: str | None = None
) -> dict[str, Any]:
  """Runs every stage; returns the summary (also written to WORKDIR/summary.json).

  `stage1_dir` (default WORKDIR/stage1) caches stage 1; runs that differ only in stage-2 settings
  may share it (its fingerprint check refuses a directory built by another stage-1 config).

  Multi-host: every process runs this (after `partitioning.initialize_distributed()`); process 0
  holds the workdir's lock and writes the config, metrics and report. Raises
  `stages.workdir.Preempted` after SIGTERM, and a `th_distill.errors.RunError` for a bad config, a
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
  models = Models.from_config(config)
  programs = Programs(models, RunSettings.from_config(config), partitioner)
  with plan(config, workdir, stage1_dir, partitioner, models).active():
    pools = prompt_pools(config)
    stage1 = stage1_lib.run(config, stage1_dir, programs, pools)
    for regime in config.regimes:
      distill.run_regime(config, workdir, regime, programs, stage1, pools)
  if not main:
    return {}

  summary = report.write_report(workdir, config, stage1.info)
  for regime, s in summary["regimes"].items():
    logging.info(
      "%-15s golden %.4f -> min %.4f @ %d -> final %.4f (%+.1f%%, trend %s/doubling), "
      "outcome: %s, detector: %s",
      regime,
      s["golden_start"],
      s["golden_min"],
      s["golden_min_step"],
      s["golden_final"],
      s["golden_rise_pct"],
      report.trend_text(s),
      s["outcome"],
      f"fired @ {s['detected_step']}" if s["detected"] else "silent",
    )
  logging.info(
    "Done in %.0fs; report in %s", time.time() - start, os.path.join(workdir, "report.md")
  )
  return summary


def done_phases(config: ml_collections.ConfigDict, workdir: str, stage1_dir: str) -> set[str]:
  """The `workload` phases an earlier run of this workdir finished (their results are cached)."""
  done = set()
  if os.path.exists(os.path.join(stage1_dir, "info.json")):
    done.update(workload.STAGE1)
  if os.path.exists(os.path.join(workdir, "offline_dataset.npz")):
    done.add(workload.OFFLINE_DATASET)
  done.update(
    workload.regime_key(r)
    for r in config.regimes
    if os.path.exists(os.path.join(workdir_lib.regime_dir(workdir, r), "done.json"))
  )
  return done


def device_gib(device: jax.Device) -> float | None:
  """GiB of memory of one device (the host's memory for a CPU), or None if unknown."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] / memory.GIB
  if device.platform == "cpu" and hasattr(os, "sysconf"):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / memory.GIB
  return None


def plan(
  config: ml_collections.ConfigDict,
  workdir: str,
  stage1_dir: str,
  partitioner: partitioning.Partitioner,
  models: Models,
) -> progress.RunClock:
  """Logs what the run will do, before any of it: devices and mesh, each model's parameter
  count, the memory per device of each compiled program (`th_distill.planning.memory`), each phase's work
  and a lower bound of the time (its FLOPs at the device's matmul rate); warns when a CPU run
  would take hours. Returns the clock of the run's phases, for progress lines and ETAs."""
  mesh = partitioner.mesh
  device = jax.devices()[0]
  logging.info(
    "Plan: %d %s device(s) (%s) in %d process(es), mesh %s",
    mesh.size,
    device.platform,
    device.device_kind,
    jax.process_count(),
    dict(mesh.shape),
  )
  for name in ("oracle", "teacher", "student"):
    model = getattr(models, name)
    cfg = model.cfg
    logging.info(
      "  %-7s %s parameters (d_model %d, %d+%d layers, vocabulary %d)",
      name,
      f"{param_count(partitioner.abstract_params(model)):,}",
      cfg.d_model,
      cfg.num_encoder_layers,
      cfg.num_decoder_layers,
      cfg.vocab_size,
    )
  programs = memory.program_estimates(config, tuple(mesh.shape[a] for a in partitioning.MESH_AXES))
  largest = max(programs, key=lambda name: programs[name]["total"])
  available = device_gib(device)
  logging.info(
    "  memory per device (th_distill.planning.memory, before XLA's temporaries): %s; a device has %s",
    ", ".join(f"{name} {parts['total']:.2f} GiB" for name, parts in programs.items()),
    f"{available:.1f} GiB" if available else "an unknown amount",
  )
  logging.info(
    "  largest: %s, %s",
    largest,
    ", ".join(
      f"{k} {v:.2f} GiB" for k, v in programs[largest].items() if v and not k.startswith("total")
    ),
  )
  if available and programs[largest]["total"] > available:
    logging.warning(
      "The %s needs about %.1f GiB per device, more than the %.1f GiB a device "
      "has: shard it over more devices, or see the memory settings in "
      "docs/scaling.md (frozen_dtype, sequence_chunks, micro_batches).",
      largest,
      programs[largest]["total"],
      available,
    )
  phases = workload.phases(
    config, partitioner.data_parallel_size, done_phases(config, workdir, stage1_dir)
  )
  peak = progress.matmul_flops_per_second() * mesh.size
  for phase in phases:
    logging.info(
      "  %-42s %s",
      phase.title + ":",
      "done by an earlier run (cached)" if phase.finished else phase.describe(),
    )
  clock = progress.RunClock(phases, peak)
  seconds, _ = clock.remaining()
  logging.info(
    "  time: at least %s (the work's FLOPs at this machine's matmul rate, %.0f "
    "GFLOP/s); each phase's first timed steps give the estimates that follow",
    progress.duration(seconds or 0.0),
    peak / 1e9,
  )
  clock.warn_if_long()
  return clock
