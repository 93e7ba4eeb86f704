"""Which devices a run's unfinished work started on: a resume must use the same ones.

A run's numbers depend on its devices beyond the config: the mesh (data, fsdp, model) splits
the reductions of every step (sums over the batch, over sharded parameters) into other float
orders, so the same run on 1 and on 2 devices differs from step 0 in the last bits (relative
1e-6 measured on CPU), and the differences grow with training. Finished work (stage 1, a
finished regime) is reused on any devices: nothing is computed again. Unfinished work that
resumes from a checkpoint (a regime's `checkpoints/`, stage 1's SFTs) is refused on other
devices (`DevicesChanged`, naming the flags that match), so that a resumed run repeats the
uninterrupted run's numbers exactly. The devices are recorded in `WORKDIR/devices.json`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from th_distill.errors import RunError
from th_distill.rundir import checkpoints, processes
from th_distill.rundir.layout import RunDirectory


class DevicesChanged(RunError):
  """Unfinished work of the workdir started on other devices (count, platform or mesh)."""


def describe(platform: str, mesh: Sequence[int]) -> dict[str, Any]:
  """The record of a run's devices: {'platform', 'count', 'mesh': [data, fsdp, model]}."""
  count = 1
  for size in mesh:
    count *= int(size)
  return {"platform": platform, "count": count, "mesh": [int(s) for s in mesh]}


def _has_checkpoint(path: str) -> bool:
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def unfinished_work(run_dir: RunDirectory, regimes: Sequence[str]) -> list[str]:
  """The checkpoint folders a run of `regimes` would resume from: unfinished regimes' and, while
  stage 1 is unfinished, its SFTs'."""
  found = []
  stage1 = run_dir.stage1
  if not stage1.finished and os.path.isdir(stage1.sft_checkpoints_root):
    found += [
      path
      for path in (
        stage1.sft_checkpoints(m) for m in sorted(os.listdir(stage1.sft_checkpoints_root))
      )
      if _has_checkpoint(path)
    ]
  for regime in regimes:
    directory = run_dir.regime(regime)
    if not directory.finished and _has_checkpoint(directory.checkpoints):
      found.append(directory.checkpoints)
  return found


def _flags(record: dict[str, Any]) -> str:
  data, fsdp, model = record["mesh"]
  text = f"--config.mesh.data={data} --config.mesh.fsdp={fsdp} --config.mesh.model={model}"
  where = f"on {record['count']} {record['platform']} device(s)"
  if record["platform"] == "cpu":
    where += f" (XLA_FLAGS=--xla_force_host_platform_device_count={record['count']})"
  return f"{text} {where}"


def check(run_dir: RunDirectory, regimes: Sequence[str], devices: dict[str, Any]) -> None:
  """Raises DevicesChanged if `run_dir` holds unfinished work (`unfinished_work`) started on
  other devices than `devices` (`describe`); records `devices` otherwise (process 0)."""
  path = os.path.join(run_dir.path, "devices.json")
  recorded = checkpoints.readable_json(path, "the devices the run started on")
  work = unfinished_work(run_dir, regimes)
  if recorded is not None and work and recorded != devices:
    raise DevicesChanged(
      f"{work[0]} holds unfinished work started on {recorded['count']} {recorded['platform']} "
      f"device(s), mesh (data, fsdp, model) = {tuple(recorded['mesh'])}; this run has "
      f"{devices['count']}, mesh {tuple(devices['mesh'])}, and would not repeat its numbers "
      f"exactly (float reduction order): resume it with {_flags(recorded)}, or use a new --workdir"
    )
  processes.write_on_main(lambda: checkpoints.write_json(path, devices))
