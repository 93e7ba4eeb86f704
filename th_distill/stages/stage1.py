"""Stage 1: the oracle, its data, the teacher, the student's starting point and the eval sets.

The oracle (synthetic, calibrated to a target entropy, or a checkpoint) samples one response to each
oracle prompt; the teacher (a random init or `teacher.checkpoint`) is trained on them by SFT (then
its logits divided by `teacher.temperature`, when that is not 1); the student's initial parameters
(a random init or `student.checkpoint`) are used as they are (`student.init = 'scratch'`) or after
an SFT on the same data (`'sft'`). The fixed evaluation sets (oracle and teacher samples on the
held-out prompts) are built here too, and the teacher's own golden distance to the oracle is
recorded. Everything is cached in a directory (`WORKDIR/stage1/`, or one shared by a study's runs)
under the sections of `rundir.records.stage1_sections` (layout: `rundir.layout.Stage1Directory`).
The SFTs run through the training loop (th_distill.stages.sft), the teacher's and the student's
side by side where stage 2's regimes would be (`MeshSection.regimes_side_by_side`; the same
numbers): a pre-empted stage 1 resumes each SFT from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from th_distill.config.run_config import RunConfig
from th_distill.data import regimes as regime_lib
from th_distill.data.batch import PromptSet
from th_distill.models import pretrained
from th_distill.observing import progress
from th_distill.oracle import calibrate_oracle, with_logit_scale
from th_distill.planning import workload
from th_distill.rundir import checkpoints, param_checkpoints, processes, records
from th_distill.rundir.layout import STAGE1_PARAMS, Stage1Directory
from th_distill.rundir.preemption import stopping_between_calls
from th_distill.stages import side_by_side
from th_distill.stages.sft import train_sft
from th_distill.training.keys import Purpose, key
from th_distill.training.programs import Programs


@dataclasses.dataclass
class Stage1:
  """Stage 1's results. `eval_sets`: {'oracle', 'teacher'} samples on the held-out prompts, each
  {prompts [E, Li], prompt_mask [E, Li], responses [E, Lt], mask [E, Lt], prompt_index [E]}
  numpy; `info`: the
  marker's record (oracle calibration, SFT losses, the teacher's golden distances)."""

  oracle_params: Any
  teacher_params: Any
  student_init_params: Any
  eval_sets: dict[str, dict[str, np.ndarray]]
  info: dict[str, Any]


def checkpoint_params(config: RunConfig, name: str, programs: Programs) -> Any:
  """`<name>.checkpoint` (a local Hugging Face or T5X checkpoint) as model `name`'s sharded
  parameters."""
  path, model = getattr(config, name).checkpoint, getattr(programs.models, name)
  try:
    params = pretrained.load_params(path, model.cfg)
  except ValueError as e:
    raise ValueError(f"{name}.checkpoint = {path!r} does not fit {name}.model: {e}") from None
  return jax.device_put(params, programs.partitioner.param_shardings(model))


def initial_params(config: RunConfig, name: str, programs: Programs, rng: jax.Array) -> Any:
  """The teacher's or student's initial parameters: `<name>.checkpoint` or a random init."""
  if getattr(config, name).checkpoint:
    return checkpoint_params(config, name, programs)
  return programs.partitioner.init_params(getattr(programs.models, name), rng)


EVAL_SOURCES = ("oracle", "teacher")  # the models whose samples make the fixed evaluation sets


def _eval_sets(
  config: RunConfig,
  programs: Programs,
  prompts: PromptSet,
  phase: progress.Phase,
  params: dict[str, Any],
) -> dict[str, dict[str, np.ndarray]]:
  """The fixed evaluation sets of the sources in `params` ({'oracle' / 'teacher': parameters}):
  one sample of each held-out prompt, a function of the seed (so a lost one is rebuilt)."""
  eval_key = key(config.seed, Purpose.EVAL_SETS)
  return {
    source: regime_lib.build_offline(
      stopping_between_calls(phase.counted(programs.host_sampler(source), "samples"), phase.title),
      params[source],
      prompts,
      1,
      jax.random.fold_in(eval_key, EVAL_SOURCES.index(source)),
    )
    for source in EVAL_SOURCES
    if source in params
  }


def _load(
  config: RunConfig,
  directory: Stage1Directory,
  programs: Programs,
  pools: dict[str, PromptSet],
  clock: progress.RunClock,
) -> Stage1:
  """A finished stage 1 read back from `directory`; an evaluation set that cannot be read is
  set aside and sampled again. DamagedFile if the parameters cannot be read."""
  like = {
    item: programs.partitioner.abstract_params(getattr(programs.models, model))
    for item, model in STAGE1_PARAMS.items()
  }
  try:
    params = param_checkpoints.load_param_trees(directory.params, like)
  except Exception as e:  # pylint: disable=broad-except  (a missing or damaged item)
    raise checkpoints.damaged(
      directory.params,
      "stage 1's parameters: the oracle, the teacher, the student's start",
      e,
      f"delete {directory.marker} to run stage 1 again (its results are a function of the seed)",
    ) from e
  sets = {
    name: checkpoints.readable_arrays(directory.eval_set(name), f"stage 1's {name} evaluation set")
    for name in EVAL_SOURCES
  }
  lost = [name for name in EVAL_SOURCES if not processes.agreed(sets[name] is not None)]
  if lost:
    phase = clock.phase("evaluation sets, rebuilt", work=[])
    sets.update(_eval_sets(config, programs, pools["eval"], phase, {n: params[n] for n in lost}))
    phase.finish()
    processes.write_on_main(
      lambda: [checkpoints.save_arrays(directory.eval_set(n), sets[n]) for n in lost]
    )
  return Stage1(
    params["oracle"], params["teacher"], params["student_init"], sets, directory.read_marker()
  )


def _oracle(
  config: RunConfig, programs: Programs, pools: dict[str, PromptSet], clock: progress.RunClock
) -> tuple[Any, dict[str, Any]]:
  """The oracle's parameters and what is recorded of them."""
  if config.oracle.source != "synthetic":
    return checkpoint_params(config, "oracle", programs), {"checkpoint": config.oracle.checkpoint}
  seed, partitioner = config.seed, programs.partitioner
  phase = clock.phase(workload.ORACLE_CALIBRATION)
  params, calibration = calibrate_oracle(
    programs.models.oracle,
    partitioner.init_params(programs.models.oracle, key(seed, Purpose.ORACLE_INIT)),
    stopping_between_calls(
      phase.counted(programs.sampler("oracle"), "sampling passes", per_row=False), phase.title
    ),
    pools["eval"][
      : workload.calibration_rows(config.prompts.num_eval, partitioner.data_parallel_size)
    ],
    key(seed, Purpose.ORACLE_CALIBRATE),
    config.oracle.target_entropy,
    config.oracle.weight_scale,
  )
  phase.finish()
  logging.info(
    "Stage 1: synthetic oracle, logit scale %.3f, entropy %.3f nats/token",
    calibration["logit_scale"],
    calibration["entropy"],
  )
  return params, calibration


def _sft(
  config: RunConfig,
  directory: Stage1Directory,
  programs: Programs,
  name: str,
  params: Any,
  oracle_data: dict[str, np.ndarray],
  purpose: Purpose,
  clock: progress.RunClock,
) -> tuple[Any, dict[str, float]]:
  """Model `name`'s SFT on the oracle data (its checkpoints in `directory`)."""
  section = getattr(config, name)
  return train_sft(
    programs,
    name,
    params,
    oracle_data,
    section.sft,
    config.seed,
    key(config.seed, purpose),
    checkpoint_dir=directory.sft_checkpoints(name),
    phase=clock.phase(f"{name} SFT", work=[progress.Work("steps", "sft", section.sft.steps, 0)]),
    checkpoint_every=config.checkpoint_every,
    on_nonfinite=config.on_nonfinite,
  )


def _run_sfts(
  config: RunConfig,
  programs: Programs,
  clock: progress.RunClock,
  sfts: dict[str, Callable[[], tuple[Any, dict[str, float]]]],
) -> dict[str, tuple[Any, dict[str, float]]]:
  """{model: (parameters, SFT record)} of each SFT of `sfts` ({model: its `_sft` call}): one
  after another, or side by side as stage 2's regimes run (`MeshSection.regimes_side_by_side`:
  on a CPU run of one process, by default; `stages.side_by_side`, the same numbers)."""
  at_once = config.mesh.regimes_side_by_side(
    len(sfts), programs.partitioner.platform, jax.process_count()
  )
  if at_once == 1:
    return {name: sft() for name, sft in sfts.items()}
  clock.run_together([f"{name} SFT" for name in sfts])
  return dict(zip(sfts, side_by_side.run_side_by_side(list(sfts.values()), at_once, "sft")))


def run(
  config: RunConfig,
  directory: Stage1Directory,
  programs: Programs,
  pools: dict[str, PromptSet],
  clock: progress.RunClock,
) -> Stage1:
  """Stage 1, cached in `directory`: read back if finished under the same sections, else run
  and written (parameters by every process, files by process 0)."""
  stage_key = records.StageKey.of(config, records.stage1_sections(config))
  if directory.finished:
    directory.read_marker()  # DamagedFile if it cannot be read
    stage_key.check(directory.marker)
    logging.info("Stage 1: reusing %s", directory.path)
    return _load(config, directory, programs, pools, clock)
  _mark_started(directory, stage_key)
  start = time.time()
  info: dict[str, Any] = stage_key.record()
  oracle_params, info["oracle"] = _oracle(config, programs, pools, clock)
  oracle_data = _oracle_data(config, programs, pools, clock, oracle_params)
  teacher_params, student_params = _trained(config, directory, programs, clock, oracle_data, info)
  phase = clock.phase(workload.EVAL_SETS)
  eval_sets = _eval_sets(
    config, programs, pools["eval"], phase, {"oracle": oracle_params, "teacher": teacher_params}
  )
  info.update(_teacher_levels(programs, eval_sets, teacher_params, oracle_params))
  phase.finish()
  logging.info(
    "Stage 1: teacher golden fkl %.3f (on oracle samples), %.1fs",
    info["teacher/golden/fkl@oracle_samples"],
    time.time() - start,
  )
  stage1 = Stage1(oracle_params, teacher_params, student_params, eval_sets, info)
  _save(directory, stage1, oracle_data, start)
  return stage1


def _mark_started(directory: Stage1Directory, stage_key: records.StageKey) -> None:
  """An unfinished stage 1 resumes its SFTs under the config it started with only (a damaged
  record of it is set aside and written again from this config)."""
  processes.write_on_main(directory.set_aside_damaged_record)
  if processes.exists_on_main(directory.started_marker):
    stage_key.check(directory.started_marker)
  else:
    processes.write_on_main(lambda: directory.write_started(stage_key.record()))


def _oracle_data(
  config: RunConfig,
  programs: Programs,
  pools: dict[str, PromptSet],
  clock: progress.RunClock,
  oracle_params: Any,
) -> dict[str, np.ndarray]:
  """One oracle sample of each oracle prompt: the teacher's (and the student's) SFT data."""
  phase = clock.phase(workload.ORACLE_SAMPLES)
  oracle_data = regime_lib.build_offline(
    stopping_between_calls(phase.counted(programs.host_sampler("oracle"), "samples"), phase.title),
    oracle_params,
    pools["oracle"],
    1,
    key(config.seed, Purpose.ORACLE_DATA),
  )
  phase.finish()
  return oracle_data


def _trained(
  config: RunConfig,
  directory: Stage1Directory,
  programs: Programs,
  clock: progress.RunClock,
  oracle_data: dict[str, np.ndarray],
  info: dict[str, Any],
) -> tuple[Any, Any]:
  """(teacher, student start) parameters: the teacher by SFT on the oracle data (its logits
  scaled by 1 / teacher.temperature), the student by SFT too if it has one; their SFT records
  go into `info`."""
  seed = config.seed
  teacher_init = initial_params(config, "teacher", programs, key(seed, Purpose.TEACHER_INIT))
  student_params = initial_params(config, "student", programs, key(seed, Purpose.STUDENT_INIT))
  sfts = {"teacher": (teacher_init, Purpose.TEACHER_TRAIN)}
  if config.student.sft is not None:
    sfts["student"] = (student_params, Purpose.STUDENT_SFT)
  trained = _run_sfts(
    config,
    programs,
    clock,
    {
      name: functools.partial(
        _sft, config, directory, programs, name, params, oracle_data, purpose, clock
      )
      for name, (params, purpose) in sfts.items()
    },
  )
  teacher_params, info["teacher_sft"] = trained["teacher"]
  if config.teacher.temperature != 1.0:
    teacher_params = with_logit_scale(teacher_params, 1.0 / config.teacher.temperature)
  if "student" in trained:
    student_params, info["student_sft"] = trained["student"]
  return teacher_params, student_params


def _teacher_levels(
  programs: Programs,
  eval_sets: dict[str, dict[str, np.ndarray]],
  teacher_params: Any,
  oracle_params: Any,
) -> dict[str, float]:
  """The teacher's own distance to the oracle (how imperfect it is) on each evaluation set:
  {'teacher/golden/<divergence>@<source>_samples': value}."""
  teacher_vs_oracle = programs.evaluator("teacher")
  levels = {}
  for source, data in eval_sets.items():
    results = teacher_vs_oracle(
      teacher_params, teacher_params, oracle_params, data, f"eval_{source}"
    )
    for name, value in results.items():
      if "/golden/" in name:
        levels[f"teacher/golden/{name.split('/')[-1]}@{source}_samples"] = value
  return levels


def _save(
  directory: Stage1Directory, stage1: Stage1, oracle_data: dict[str, np.ndarray], start: float
) -> None:
  """The three models' parameters (every process: a collective), then on process 0 the oracle
  data, the evaluation sets and the finished marker; the SFTs' checkpoints are removed."""
  param_checkpoints.save_param_trees(
    directory.params,
    {
      "oracle": stage1.oracle_params,
      "teacher": stage1.teacher_params,
      "student_init": stage1.student_init_params,
    },
  )
  info = stage1.info

  def write_files():
    checkpoints.save_arrays(directory.oracle_data, oracle_data)
    for name, data in stage1.eval_sets.items():
      checkpoints.save_arrays(directory.eval_set(name), data)
    info["finished_at"] = time.time()  # the report's wall time (regimes may overlap)
    info["seconds"] = info["finished_at"] - start
    checkpoints.write_json(directory.marker, info)
    shutil.rmtree(directory.sft_checkpoints_root, ignore_errors=True)  # stage 1 is finished

  processes.write_on_main(write_files)
