"""The plan a run logs before any work: devices and mesh, each model's parameter count, the
memory per device of each compiled program (th_distill.planning.memory), each phase's work
(th_distill.planning.workload) and a first time estimate; it warns when a CPU run would take
hours, and stops (`check_memory`) when a program needs more memory per device than a device has.
`log_plan` returns the run's clock, which the progress lines and ETAs read.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from th_distill import partitioning
from th_distill.config.run_config import RunConfig
from th_distill.errors import RunError
from th_distill.models import param_count
from th_distill.observing import progress
from th_distill.planning import memory, workload
from th_distill.rundir.layout import RunDirectory
from th_distill.training import offline_dataset
from th_distill.training.program_builders import Models
from th_distill.training.programs import MemoryLayout


def done_phases(config: RunConfig, run_dir: RunDirectory) -> set[str]:
  """The `workload` phases an earlier run of this workdir finished (their results are cached)."""
  done = set()
  if run_dir.stage1.finished:
    done.update(workload.STAGE1)
  if os.path.exists(run_dir.offline_dataset):
    done.add(offline_dataset.PHASE)
  done.update(workload.regime_key(r) for r in config.regimes if run_dir.regime(r).finished)
  return done


def device_gib(device: jax.Device) -> float | None:
  """GiB of memory of one device (the host's memory for a CPU), or None if unknown."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] / memory.GIB
  if device.platform == "cpu" and hasattr(os, "sysconf"):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / memory.GIB
  return None


class OverMemory(RunError):
  """The plan needs more memory per device than a device has."""


def check_memory(program: str, needed: float, available: float | None, ignore: bool) -> None:
  """Raises OverMemory if `program` needs more GiB per device (`needed`) than a device has
  (`available`; None: unknown), naming both and the memory settings to try; with `ignore`
  (`mesh.ignore_memory_estimate`) only warns."""
  if not available or needed <= available:
    return
  one_at_a_time = (
    "run the regimes one at a time (--config.mesh.regimes_at_once=1), "
    if "side by side" in program
    else ""
  )
  text = (
    f"the {program} needs about {needed:.1f} GiB per device, more than the {available:.1f} GiB "
    f"a device has: {one_at_a_time}shard it over more devices (--config.mesh.*) or lower its memory "
    "(--config.frozen_dtype=bfloat16, --config.sequence_chunks, --config.student.micro_batches, "
    "a smaller batch size; docs/scaling.md)"
  )
  if not ignore:
    raise OverMemory(f"{text}; --config.mesh.ignore_memory_estimate=True runs it anyway")
  logging.warning("%s%s; going on (mesh.ignore_memory_estimate = True).", text[0].upper(), text[1:])


def _mesh(partitioner: partitioning.Partitioner) -> tuple[int, ...]:
  return tuple(partitioner.mesh.shape[a] for a in partitioning.MESH_AXES)


def run_layout(config: RunConfig, partitioner: partitioning.Partitioner) -> MemoryLayout:
  """How the run splits its samplers' and evaluator's host data for these devices
  (`memory.memory_layout` for the memory of the first device)."""
  return memory.memory_layout(config, _mesh(partitioner), device_gib(jax.devices()[0]))


def log_plan(
  config: RunConfig,
  run_dir: RunDirectory,
  partitioner: partitioning.Partitioner,
  models: Models,
  layout: MemoryLayout | None = None,
) -> progress.RunClock:
  """Logs what the run will do, before any of it: devices and mesh, each model's parameter
  count, the memory per device of each compiled program (`th_distill.planning.memory`; the
  distillation steps of regimes side by side together), each phase's work
  and a lower bound of the time (its FLOPs at the device's matmul rate); warns when a CPU run
  would take hours. Raises OverMemory before any compute when a program does not fit (unless
  `mesh.ignore_memory_estimate`). `layout`: how the programs split host data (default:
  `run_layout`). Returns the clock of the run's phases, for progress lines and ETAs."""
  _log_devices_and_models(partitioner, models)
  layout = layout or run_layout(config, partitioner)
  _log_and_check_memory(config, partitioner, layout)
  return _log_phases(config, run_dir, partitioner)


def _log_devices_and_models(partitioner: partitioning.Partitioner, models: Models) -> None:
  """The devices, processes and mesh; each model's parameter count and shape."""
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
      "  %-7s %s parameters (%s, vocabulary %d)",
      name,
      f"{param_count(partitioner.abstract_params(model)):,}",
      cfg.describe(),
      cfg.vocab_size,
    )


def _log_and_check_memory(
  config: RunConfig, partitioner: partitioning.Partitioner, layout: MemoryLayout
) -> None:
  """Each program's memory per device, the largest's parts and the calls that fit; OverMemory
  when the largest does not fit (`check_memory`)."""
  programs = memory.program_estimates(config, _mesh(partitioner), layout)
  at_once = config.mesh.regimes_side_by_side(
    len(config.regimes), partitioner.platform, jax.process_count()
  )
  if at_once > 1:
    programs[f"distill_step x {at_once} (regimes side by side)"] = memory.side_by_side(
      programs["distill_step"], at_once
    )
  largest = max(programs, key=lambda name: programs[name]["total"])
  available = device_gib(jax.devices()[0])
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
  logging.info("  %s", memory.layout_text(config, layout))
  check_memory(largest, programs[largest]["total"], available, config.mesh.ignore_memory_estimate)


def _log_phases(
  config: RunConfig, run_dir: RunDirectory, partitioner: partitioning.Partitioner
) -> progress.RunClock:
  """Each phase's work (or that an earlier run did it) and a lower bound of the time; the
  clock of the run's phases."""
  phases = workload.phases(config, partitioner.data_parallel_size, done_phases(config, run_dir))
  peak = progress.matmul_flops_per_second() * partitioner.mesh.size
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
