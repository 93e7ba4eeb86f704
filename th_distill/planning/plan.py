r"""A run's compiled programs for a mesh, ahead of time: XLA's memory, FLOPs and collectives.

  python -m th_distill.planning.plan --config=configs/xsum_large_to_base.py --mesh=1,16,2
  python -m th_distill.planning.plan --config=configs/t5_small.py --devices=32   # the config's mesh

Every program a run compiles (`PROGRAMS`: the oracle's sampler, the teacher's SFT step, the
student's distillation step, the online teacher sampler, the evaluator) is built by the
run's own builders (`th_distill.training.program_builders.sampler_program`, ...), lowered for
`jax.ShapeDtypeStruct` arguments that carry the run's shardings and compiled: no parameter, batch or dataset is ever
allocated, and no data, vocabulary or checkpoint file is read (shapes only). Per program and per
device it reports XLA's memory analysis (arguments, outputs, temporaries, and their peak total:
arguments + outputs - donated aliases + temporaries), XLA's FLOP count beside
`th_distill.planning.flops`, the collectives of the compiled HLO (count and bytes per kind) and XLA's
full-rematerialisation warnings; before the programs, whether every parameter of every model is
split as the logical rules say (`dropped_axes`). A mesh that does not use exactly the devices or
whose data x fsdp does not divide the batches is refused in one line (exit status 2).
`--programs=` (empty) only runs these checks (the launchers' `--plan=check`); `--json=PATH`
writes the figures.

Devices: the mesh is built from host CPU devices. The command sets `jax_platforms = 'cpu'` and
`jax_num_cpu_devices` (the same as `XLA_FLAGS=--xla_force_host_platform_device_count=N`) to the
mesh's size in its body, after parsing flags and before JAX starts a backend (nothing earlier
touches a device), so it needs no environment variable and no re-execution; as a library, `plan`
needs that many CPU devices already (start Python with that XLA_FLAGS). Compiling for a CPU
mesh is not compiling for a TPU: the partitioning, shapes, collectives and argument/output
sizes carry over; temporaries, fusion and FLOPs of element-wise work are the CPU compiler's
(docs/scaling.md compares them with `th_distill.planning.memory`).

Configs: the paper's configs name real tasks with empty paths (given on the command line of a
real run). `planning_config` replaces the task and oracle sources by synthetic ones and clears
every path before `config.validate`, so all other fields are checked as a run would check them;
shapes do not depend on the cleared fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from th_distill import cli
from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import (
  DEFAULT_RULES,
  MESH_AXES,
  Partitioner,
  boxed_param_shapes,
  make_mesh,
  resolve_mesh_shape,
)
from th_distill.planning import memory
from th_distill.planning.compiled import HEADER, ProgramPlan, compile_program, format_row
from th_distill.planning.program_shapes import PROGRAMS, abstract_programs
from th_distill.training.program_builders import Models


def planning_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` that validates without any other file: models of family 'checkpoint'
  read from their checkpoints' config.json, then synthetic task and oracle sources, no
  vocabulary, data or checkpoint paths (shapes come from the model configs and `task.*_length`,
  `task.vocab_size`, which are kept and checked)."""
  c = config_lib.resolve_checkpoint_models(config).copy_and_resolve_references()
  c.task.update(source="synthetic", vocabulary="", data_dir="")
  c.oracle.update(source="synthetic", checkpoint="")
  c.teacher.checkpoint = c.student.checkpoint = ""
  return c


def dropped_axes(
  model: LanguageModel, mesh_shape: dict[str, int], rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> list[str]:
  """The parameters of `model` that the logical rules would split over a mesh axis of size > 1
  which does not divide the dimension, so that it stays whole on every device: one
  'path [shape]: name not split over axis (size n)' each; [] when every rule applies."""
  problems = []
  boxes = jax.tree_util.tree_leaves_with_path(
    boxed_param_shapes(model), is_leaf=lambda x: hasattr(x, "names")
  )
  for path, box in boxes:
    shape = box.value.shape
    for size, name, axes in zip(
      shape, box.names, nn.logical_to_mesh_axes(tuple(box.names), tuple(rules))
    ):
      parts = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      split = math.prod(mesh_shape[a] for a in parts)
      if split > 1 and size % split:
        problems.append(
          f"{jax.tree_util.keystr(path)} {list(shape)}: {name} not split over "
          f"{'x'.join(parts)} ({split})"
        )
  return problems


def check_mesh(config: ml_collections.ConfigDict, mesh: Sequence[int], devices: int) -> None:
  """ConfigError (one line) unless `mesh` (data, fsdp, model) uses exactly `devices` devices and
  data x fsdp divides every batch of the run."""
  try:
    resolve_mesh_shape(*mesh, devices)
  except ValueError as e:
    raise config_lib.ConfigError(f"mesh: {e}") from None
  data_parallel = mesh[0] * mesh[1]
  micro = max(config.student.micro_batches, 1)
  for field, size, parts in (
    ("teacher.batch_size", config.teacher.batch_size, 1),
    ("student.batch_size", config.student.batch_size, micro),
  ):
    if size % (data_parallel * parts):
      times = f" x student.micro_batches = {parts}" if parts > 1 else ""
      raise config_lib.ConfigError(
        f"mesh {tuple(mesh)}: data x fsdp = {data_parallel}{times} does not divide {field} = "
        f"{size}; choose a mesh whose data x fsdp divides it"
      )


def plan(
  config: ml_collections.ConfigDict,
  mesh: Sequence[int],
  programs: Sequence[str] = PROGRAMS,
  report: Callable[[ProgramPlan], None] | None = None,
  device_gib: float | None = None,
) -> list[ProgramPlan]:
  """Compiles `programs` of `config` for a (data, fsdp, model) `mesh` of host CPU devices (at
  least data x fsdp x model must exist: see the module doc); `report` is called after each.
  `device_gib`: the target's memory per device, which sets how the samplers and the evaluator
  split their calls (`memory.memory_layout`; None: as the config says)."""
  devices = math.prod(mesh)
  check_mesh(config, mesh, devices)
  available = jax.devices("cpu")
  if len(available) < devices:
    raise config_lib.ConfigError(
      f"mesh {tuple(mesh)} needs {devices} devices but JAX has {len(available)} CPU devices; "
      f"start Python with XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
    )
  partitioner = Partitioner(make_mesh(*mesh, devices=available[:devices]))
  typed = RunConfig.from_config(config)
  built = abstract_programs(typed, partitioner, memory.memory_layout(typed, mesh, device_gib))
  plans = []
  for name in programs:
    plans.append(compile_program(name, *built[name], devices))
    if report:
      report(plans[-1])
  return plans


def target_mesh(
  config: ml_collections.ConfigDict, mesh: str | None, devices: int | None
) -> tuple[int, int, int]:
  """The (data, fsdp, model) mesh to plan: `mesh` if given (it must use `devices` devices when
  both are given), else the config's `mesh.*` resolved for `devices`."""
  if mesh is not None:
    shape = memory.parse_mesh(mesh, config.student.batch_size)
    if devices is not None and math.prod(shape) != devices:
      raise config_lib.ConfigError(
        f"--mesh={mesh} uses {math.prod(shape)} devices, but the "
        f"target has {devices}; use a mesh whose product is {devices}"
      )
    return shape
  if devices is None:
    raise config_lib.ConfigError(
      "give --mesh=data,fsdp,model or --devices=N (the config's mesh "
      "is then resolved for N devices)"
    )
  try:
    return resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.model, devices)
  except ValueError as e:
    raise config_lib.ConfigError(
      f"config.mesh (data, fsdp, model) on {devices} devices: {e}"
    ) from None


def _run(
  config: ml_collections.ConfigDict,
  config_name: str,
  mesh_text: str | None,
  devices: int | None,
  programs: Sequence[str],
  json_path: str | None,
  device_gb: float | None = None,
) -> None:
  """The command's work: checks `config` (loaded from `config_name`) on the target mesh, then
  compiles and prints `programs`, also written to `json_path` if given."""
  config = planning_config(config)
  mesh = target_mesh(config, mesh_text, devices)
  unknown = set(programs) - set(PROGRAMS)
  if unknown:
    raise config_lib.ConfigError(f"--programs: unknown {sorted(unknown)}; choose of {PROGRAMS}")
  check_mesh(config, mesh, math.prod(mesh))
  # Before any backend starts: host CPU devices only (validate counts them), as many as the mesh.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", math.prod(mesh))
  config.mesh.update(dict(zip(MESH_AXES, mesh)))
  models = Models.from_config(config_lib.validate(config))
  for name in ("oracle", "teacher", "student"):
    problems = dropped_axes(getattr(models, name), dict(zip(MESH_AXES, mesh)))
    print(
      f"{name} parameters: "
      + (
        "every one split as the rules say"
        if not problems
        else f"{len(problems)} left whole along an axis: " + "; ".join(problems)
      )
    )
  where = f"{config_name} on mesh (data, fsdp, model) = {mesh}"
  if not programs:
    print(f"{where}: fits {math.prod(mesh)} devices and splits every batch")
    return
  device_gib = None if device_gb is None else device_gb * 1e9 / memory.GIB
  if device_gib is not None:
    typed = RunConfig.from_config(config)
    print(
      f"{device_gb:g} GB devices: "
      + memory.layout_text(typed, memory.memory_layout(typed, mesh, device_gib))
    )
  print(f"{where}: per device, compiled for {math.prod(mesh)} host CPU devices")
  print(HEADER, flush=True)
  plans = plan(
    config, mesh, programs, report=lambda p: print(format_row(p), flush=True), device_gib=device_gib
  )
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"mesh": mesh, "programs": [dataclasses.asdict(p) for p in plans]}, f, indent=1)


def main() -> None:
  """The command line (flags are defined here, not at import: other modules define --config too)."""
  config = cli.config_flag(
    "Config file (configs/*.py); --config.KEY=VALUE overrides as for th_distill.main."
  )
  flags.mark_flag_as_required("config")
  mesh = flags.DEFINE_string("mesh", None, "data,fsdp,model (default: the config's mesh).")
  devices = flags.DEFINE_integer(
    "devices",
    None,
    "Devices of the target (a slice's chips); default: data x fsdp x model of --mesh.",
    lower_bound=1,
  )
  json_path = flags.DEFINE_string(
    "json",
    None,
    "Also write the plans to this JSON file (a list "
    "of ProgramPlan fields per program, bytes and FLOPs per device).",
  )
  programs = flags.DEFINE_list("programs", list(PROGRAMS), f"Programs to compile, of {PROGRAMS}.")
  device_gb = flags.DEFINE_float(
    "device_gb",
    None,
    "Memory of one target device in GB (1e9 bytes): the samplers and the evaluator split their "
    "calls to fit it, as a run does (default: as the config says).",
  )

  def body(argv: list[str]) -> None:
    cli.reject_arguments(argv)
    cli.run_command(
      lambda: _run(
        config.value,
        config_flags.get_config_filename(flags.FLAGS["config"]),
        mesh.value,
        devices.value,
        programs.value,
        json_path.value,
        device_gb.value,
      )
    )

  cli.main(body)


if __name__ == "__main__":
  main()
