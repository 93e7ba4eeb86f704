"""Which devices a run's unfinished work started on: a resume must use the same ones.

A run's numbers depend on its devices beyond the config: the mesh (data, fsdp, model) splits
the reductions of every step (sums over the batch, over sharded parameters) into other float
orders, so the same run on 1 and on 2 devices differs from step 0 in the last bits (relative
1e-6 measured on CPU), and the differences grow with training. Finished work (stage 1, a
finished regime) is reused on any devices: nothing is computed again. Unfinished work that
resumes from a checkpoint (a regime's `checkpoints/`, stage 1's SFTs) is refused on other
devices (`DevicesChanged`, naming the flags that match), so that a resumed run repeats the
uninterrupted run's numbers exactly. The devices of each unit (stage 1, each regime) are
recorded in `WORKDIR/devices.json`.
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


def unfinished_work(run_dir: RunDirectory, regimes: Sequence[str]) -> dict[str, str]:
  """{unit: its checkpoint folder} of the work a run of `regimes` would resume from checkpoints:
  'stage1' while stage 1 is unfinished and its SFTs have one, and each unfinished regime that
  has one."""
  found = {}
  stage1 = run_dir.stage1
  if not stage1.finished and os.path.isdir(stage1.sft_checkpoints_root):
    for model in sorted(os.listdir(stage1.sft_checkpoints_root)):
      if _has_checkpoint(stage1.sft_checkpoints(model)):
        found.setdefault("stage1", stage1.sft_checkpoints(model))
  for regime in regimes:
    directory = run_dir.regime(regime)
    if not directory.finished and _has_checkpoint(directory.checkpoints):
      found[regime] = directory.checkpoints
  return found


def _flags(record: dict[str, Any]) -> str:
  data, fsdp, model = record["mesh"]
  text = f"--config.mesh.data={data} --config.mesh.fsdp={fsdp} --config.mesh.model={model}"
  where = f"on {record['count']} {record['platform']} device(s)"
  if record["platform"] == "cpu":
    where += f" (XLA_FLAGS=--xla_force_host_platform_device_count={record['count']})"
  return f"{text} {where}"


def check(run_dir: RunDirectory, regimes: Sequence[str], devices: dict[str, Any]) -> None:
  """Raises DevicesChanged if `run_dir` holds unfinished work of this run (stage 1, `regimes`:
  `unfinished_work`) started on other devices than `devices` (`describe`); else records
  `devices` for each of this run's units (process 0), leaving other regimes' records as they
  are, in `WORKDIR/devices.json` ({unit: devices})."""
  path = os.path.join(run_dir.path, "devices.json")
  recorded = checkpoints.readable_json(path, "the devices each unit of the run started on") or {}
  for unit, folder in unfinished_work(run_dir, regimes).items():
    started = recorded.get(unit)
    if started is not None and started != devices:
      raise DevicesChanged(
        f"{folder} holds unfinished work started on {started['count']} {started['platform']} "
        f"device(s), mesh (data, fsdp, model) = {tuple(started['mesh'])}; this run has "
        f"{devices['count']}, mesh {tuple(devices['mesh'])}, and would not repeat its numbers "
        f"exactly (float reduction order): resume it with {_flags(started)}, or use a new "
        "--workdir"
      )
  record = {**recorded, **{unit: devices for unit in ("stage1", *regimes)}}
  processes.write_on_main(lambda: checkpoints.write_json(path, record))
