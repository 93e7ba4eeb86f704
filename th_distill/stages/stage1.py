"""Stage 1: the oracle, its data, the teacher, the student's starting point and the eval sets.

The oracle (synthetic, calibrated to a target entropy, or a checkpoint) samples one response to each
oracle prompt; the teacher (a random init or `teacher.checkpoint`) is trained on them by SFT (then
its logits divided by `teacher.temperature`, when that is not 1); the student's initial parameters
(a random init or `student.checkpoint`) are used as they are (`student.init = 'scratch'`) or after
an SFT on the same data (`'sft'`). The fixed evaluation sets (oracle and teacher samples on the
held-out prompts) are built here too, and the teacher's own golden distance to the oracle is
recorded. Everything is cached in a directory (`WORKDIR/stage1/`, or one shared by a study's runs)
under the sections of `workdir.stage1_sections`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from th_distill.config.settings import OptimizerSettings
from th_distill.data import regimes as regime_lib
from th_distill.models import T5, pretrained
from th_distill.observing import progress
from th_distill.oracle import calibrate_oracle, with_logit_scale
from th_distill.planning import workload
from th_distill.rundir import checkpoints
from th_distill.rundir import records as workdir
from th_distill.stages.keys import Purpose, key
from th_distill.training import guards
from th_distill.training.programs import Programs, new_train_state

# Stage 1's parameter checkpoints: {directory name: model}.
PARAMS = {"oracle": "oracle", "teacher": "teacher", "student_init": "student"}


@dataclasses.dataclass
class Stage1:
  """Stage 1's results. `eval_sets`: {'oracle', 'teacher'} samples on the held-out prompts, each
  {prompts [E, Li], responses [E, Lt], mask [E, Lt], prompt_index [E]} numpy; `info`: the
  marker's record (oracle calibration, SFT losses, the teacher's golden distances)."""

  oracle_params: Any
  teacher_params: Any
  student_init_params: Any
  eval_sets: dict[str, dict[str, np.ndarray]]
  info: dict[str, Any]


def train_sft(
  programs: Programs,
  name: str,
  params: Any,
  data: dict[str, np.ndarray],
  settings: OptimizerSettings,
  seed: int,
  rng: jax.Array,
) -> tuple[Any, dict]:
  """Cross-entropy training of model `name`'s `params` on `data` (prompts, responses, mask) for
  `settings.steps` steps of `settings.batch_size` rows in seeded epochs; returns the parameters
  and the last step's metrics. Raises guards.NonFiniteStep if the final loss is not finite."""
  model: T5 = getattr(programs.models, name)
  partitioner = programs.partitioner
  state = new_train_state(partitioner, model, params, settings.build())
  step_fn = programs.sft_step(name, settings)
  batches = regime_lib.offline_batches(data, settings.batch_size, seed)
  metrics: dict[str, Any] = {}
  phase = progress.phase(f"{name} SFT", work=[progress.Work("steps", "sft", settings.steps, 0)])
  for step in range(settings.steps):
    state, metrics = step_fn(
      state, partitioner.shard_batch(batches(step)), jax.random.fold_in(rng, step)
    )
    # Progress lines time each step (th_distill.observing.progress), so they read its loss when printed.
    phase.advance("steps", detail=lambda: f"loss {float(metrics['sft/loss']):.4f}")  # noqa: B023 (read when printed, this step)
  final = {k: float(v) for k, v in metrics.items()}
  phase.finish()
  if not np.isfinite(final.get("sft/loss", 0.0)):
    raise guards.NonFiniteStep(
      f"{name} SFT diverged: loss {final['sft/loss']} after "
      f"{settings.steps} steps; lower {name}.learning_rate"
    )
  return state.params, final


def checkpoint_params(config: ml_collections.ConfigDict, name: str, programs: Programs) -> Any:
  """`<name>.checkpoint` (a local Hugging Face or T5X checkpoint) as model `name`'s sharded
  parameters."""
  path, model = config[name].checkpoint, getattr(programs.models, name)
  try:
    params = pretrained.load_params(path, model.cfg)
  except ValueError as e:
    raise ValueError(f"{name}.checkpoint = {path!r} does not fit {name}.model: {e}") from None
  return jax.device_put(params, programs.partitioner.param_shardings(model))


def initial_params(
  config: ml_collections.ConfigDict, name: str, programs: Programs, rng: jax.Array
) -> Any:
  """The teacher's or student's initial parameters: `<name>.checkpoint` or a random init."""
  if config[name].checkpoint:
    return checkpoint_params(config, name, programs)
  return programs.partitioner.init_params(getattr(programs.models, name), rng)


def _load(directory: str, programs: Programs) -> Stage1:
  """A finished stage 1 read back from `directory`."""
  params = {
    name: checkpoints.load_params(
      os.path.join(directory, name),
      programs.partitioner.abstract_params(getattr(programs.models, model)),
    )
    for name, model in PARAMS.items()
  }
  return Stage1(
    params["oracle"],
    params["teacher"],
    params["student_init"],
    {
      name: checkpoints.load_arrays(os.path.join(directory, f"eval_{name}.npz"))
      for name in ("oracle", "teacher")
    },
    checkpoints.read_json(os.path.join(directory, "info.json")),
  )


def _oracle(
  config: ml_collections.ConfigDict, programs: Programs, pools: dict[str, np.ndarray]
) -> tuple[Any, dict[str, Any]]:
  """The oracle's parameters and what is recorded of them."""
  if config.oracle.source != "synthetic":
    return checkpoint_params(config, "oracle", programs), {"checkpoint": config.oracle.checkpoint}
  seed, partitioner = config.seed, programs.partitioner
  phase = progress.phase(workload.ORACLE_CALIBRATION)
  params, calibration = calibrate_oracle(
    programs.models.oracle,
    partitioner.init_params(programs.models.oracle, key(seed, Purpose.ORACLE_INIT)),
    phase.counted(programs.sampler("oracle"), "sampling passes", per_row=False),
    pools["eval"][: workload.calibration_rows(config, partitioner.data_parallel_size)],
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


def run(
  config: ml_collections.ConfigDict,
  directory: str,
  programs: Programs,
  pools: dict[str, np.ndarray],
) -> Stage1:
  """Stage 1, cached in `directory`: read back if finished under the same sections, else run
  and written (parameters by every process, files by process 0)."""
  marker = os.path.join(directory, "info.json")
  stage_key = workdir.StageKey.of(config, workdir.stage1_sections(config))
  if os.path.exists(marker):
    stage_key.check(marker)
    logging.info("Stage 1: reusing %s", directory)
    return _load(directory, programs)

  seed, settings, start = config.seed, programs.settings, time.time()
  info: dict[str, Any] = stage_key.record()
  oracle_params, info["oracle"] = _oracle(config, programs, pools)
  sample_oracle = programs.host_sampler("oracle")
  phase = progress.phase(workload.ORACLE_SAMPLES)
  oracle_data = regime_lib.build_offline(
    phase.counted(sample_oracle, "samples"),
    oracle_params,
    pools["oracle"],
    1,
    key(seed, Purpose.ORACLE_DATA),
  )
  phase.finish()
  teacher_params, info["teacher_sft"] = train_sft(
    programs,
    "teacher",
    initial_params(config, "teacher", programs, key(seed, Purpose.TEACHER_INIT)),
    oracle_data,
    settings.teacher_sft,
    seed,
    key(seed, Purpose.TEACHER_TRAIN),
  )
  if config.teacher.temperature != 1.0:
    teacher_params = with_logit_scale(teacher_params, 1.0 / config.teacher.temperature)
  student_params = initial_params(config, "student", programs, key(seed, Purpose.STUDENT_INIT))
  if settings.student_sft is not None:
    student_params, info["student_sft"] = train_sft(
      programs,
      "student",
      student_params,
      oracle_data,
      settings.student_sft,
      seed,
      key(seed, Purpose.STUDENT_SFT),
    )

  eval_key = key(seed, Purpose.EVAL_SETS)
  phase = progress.phase(workload.EVAL_SETS)
  eval_sets = {
    source: regime_lib.build_offline(
      phase.counted(programs.host_sampler(source), "samples"),
      params,
      pools["eval"],
      1,
      jax.random.fold_in(eval_key, i),
    )
    for i, (source, params) in enumerate((("oracle", oracle_params), ("teacher", teacher_params)))
  }
  # The teacher's own distance to the oracle: how imperfect the teacher is.
  teacher_vs_oracle = programs.evaluator("teacher")
  for source, data in eval_sets.items():
    results = teacher_vs_oracle(
      teacher_params, teacher_params, oracle_params, data, f"eval_{source}"
    )
    for name, value in results.items():
      if "/golden/" in name:
        info[f"teacher/golden/{name.split('/')[-1]}@{source}_samples"] = value
  phase.finish()
  logging.info(
    "Stage 1: teacher golden fkl %.3f (on oracle samples), %.1fs",
    info["teacher/golden/fkl@oracle_samples"],
    time.time() - start,
  )

  os.makedirs(directory, exist_ok=True)
  for name, params in (
    ("oracle", oracle_params),
    ("teacher", teacher_params),
    ("student_init", student_params),
  ):
    checkpoints.save_params(os.path.join(directory, name), params)  # collective

  def write_files():
    checkpoints.save_arrays(os.path.join(directory, "oracle_data.npz"), oracle_data)
    for name, data in eval_sets.items():
      checkpoints.save_arrays(os.path.join(directory, f"eval_{name}.npz"), data)
    info["seconds"] = time.time() - start
    checkpoints.write_json(marker, info)

  workdir.write_on_main(write_files)
  return Stage1(oracle_params, teacher_params, student_params, eval_sets, info)
