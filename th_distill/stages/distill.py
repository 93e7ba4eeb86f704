"""Stage 2: the student distilled from the teacher under one data regime.

`run_regime` builds the regime's batch source (th_distill.training.sources), the evaluation on the
fixed sets and a `th_distill.training.distiller.Distiller` of the run's models, loss and optimiser
(the object a project uses on its own models and data) with the config's detector: evaluation rows
at `EvalSettings.steps`, the hacking detector's action, progress. It steps the compiled
distillation step from the latest checkpoint (or step 0) to `student.steps`, checkpointing every
`checkpoint_every` steps and stopping cleanly on pre-emption. Results go to `WORKDIR/<regime>/`
(th_distill.rundir.layout); a finished regime is reused.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from th_distill.config.run_config import RunConfig
from th_distill.data import regimes as regime_lib
from th_distill.data.batch import PromptSet
from th_distill.observing import progress
from th_distill.observing.metric_names import (
  EVAL_ORACLE,
  EVAL_STUDENT,
  EVAL_TEACHER,
  GOLDEN,
  PROXY,
  TRAIN_TEACHER,
)
from th_distill.planning import workload
from th_distill.rundir import checkpoints, processes, records
from th_distill.rundir.layout import REPORT_SAMPLE_ROWS, RegimeDirectory, RunDirectory
from th_distill.stages.stage1 import Stage1
from th_distill.training import dispatch, sources
from th_distill.training.batch_source import BatchSource
from th_distill.training.distiller import Distiller
from th_distill.training.hooks import (
  RefreshAction,
  RowAction,
)
from th_distill.training.keys import Purpose, key
from th_distill.training.programs import Programs
from th_distill.training.source_context import SourceContext


def _evaluation(
  config: RunConfig,
  programs: Programs,
  stage1: Stage1,
  eval_prompts: PromptSet,
  frozen: tuple[Any, Any],
  train_set: dict[str, np.ndarray],
):
  """`evaluate(student_params, step) -> {name: value}`: the student against the teacher and
  the oracle on the fixed sets (oracle and teacher samples on held-out prompts, the
  training-prompt set; the references' logits on them computed once, `Programs.set_evaluator`)
  and on its own fresh samples of the held-out prompts."""
  fixed_sets = {
    name: programs.set_evaluator("student", *frozen, data)
    for name, data in (
      (EVAL_ORACLE, stage1.eval_sets["oracle"]),
      (EVAL_TEACHER, stage1.eval_sets["teacher"]),
      (TRAIN_TEACHER, train_set),
    )
  }
  evaluate_set, sample_student = programs.evaluator("student"), programs.host_sampler("student")
  student_key = key(config.seed, Purpose.EVAL_STUDENT)

  def evaluate(student_params: Any, step: int) -> dict[str, float]:
    student_samples = regime_lib.build_offline(
      sample_student, student_params, eval_prompts, 1, jax.random.fold_in(student_key, step)
    )
    results = {}
    for name, evaluate_fixed in fixed_sets.items():
      results.update(evaluate_fixed(student_params, name))
    results.update(evaluate_set(student_params, *frozen, student_samples, EVAL_STUDENT))
    return results

  return evaluate


def _check_reusable(config: RunConfig, directory: RegimeDirectory, key_: records.StageKey) -> bool:
  """Whether the regime is finished (after checking it was made by this config and kept its
  rows); an unfinished one resumes under the config it started with only. A marker that cannot
  be read is set aside first (`RegimeDirectory.set_aside_damaged_markers`)."""
  processes.write_on_main(directory.set_aside_damaged_markers)
  if directory.finished:
    started = directory.started_marker
    key_.check(started if os.path.exists(started) else directory.done_marker)  # its fields
    directory.check_rows(config.eval_settings.steps)
    return True
  if processes.exists_on_main(directory.started_marker):
    key_.check(directory.started_marker)
  else:
    processes.write_on_main(lambda: directory.write_started(key_.record()))
  return False


def _distiller(
  config: RunConfig,
  regime: str,
  programs: Programs,
  stage1: Stage1,
  frozen: tuple[Any, Any],
  directory: RegimeDirectory,
) -> Distiller:
  """The regime's `Distiller`: the run's models, the frozen teacher and oracle, the config's
  loss, optimiser, checkpoints and steps per dispatch, writing into the regime's directory."""
  models, distill = programs.models, config.distill
  return Distiller(
    models.student,
    models.teacher,
    distill.optimizer.build(),
    student_params=stage1.student_init_params,
    teacher_params=frozen[0],
    oracle=models.oracle,
    oracle_params=frozen[1],
    loss=distill.loss,
    micro_batches=distill.micro_batches,
    sequence_chunks=distill.sequence_chunks,
    on_nonfinite=distill.on_nonfinite,
    workdir=directory.path,
    checkpoint_every=config.checkpoint_every,
    rng=key(config.seed, Purpose.TRAIN_DROPOUT),
    partitioner=programs.partitioner,
    steps_per_dispatch=dispatch.steps_per_dispatch(
      config.mesh.steps_per_dispatch,
      workload.distill_step_flops(config),
      programs.partitioner.platform,
    ),
    name=regime,
  )


def _detector(
  config: RunConfig, distiller: Distiller, source: BatchSource, phase: progress.Phase
) -> None:
  """The `detection` section's detector on the rows (`Distiller.watch`), keeping its
  parameters; with `on_detect = 'refresh'` the source's refresh (`RefreshAction`); the
  source's work done before a resumed run skipped in `phase`."""
  det = config.detection
  refreshing = source.refreshes(config)
  distiller.watch(
    det.detector, det.metric, det.on_detect, det.keep + ("best_predicted",) * refreshing
  )

  def start(step: int, history: list[dict[str, float]]) -> list[RowAction]:
    del history
    for item, done in source.done_work(config, step).items():
      phase.skip(item, done)
    if not refreshing:
      return []
    monitor, kept = distiller.monitor, distiller.kept
    if monitor.fired:  # before the resume
      source.refresh(monitor.result.step)
    return [
      RefreshAction(
        monitor,
        lambda params: kept.load("best_predicted", params, monitor.result.best_predicted_step),
        source.refresh,
        source.refreshed_at,
      )
    ]

  distiller.add_actions(start)


def run_regime(
  config: RunConfig,
  run_dir: RunDirectory,
  regime: str,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, PromptSet],
  clock: progress.RunClock,
) -> None:
  """Distils the student under `regime` into `WORKDIR/<regime>/`, resuming an unfinished run.
  Raises rundir.preemption.Preempted after a pre-emption (checkpointed),
  guards.NonFiniteStep after a non-finite step under `on_nonfinite = 'stop'`,
  records.ConfigChanged if the directory holds another configuration's run."""
  directory = run_dir.regime(regime)
  stage_key = records.StageKey.of(config, records.regime_sections(config))
  if _check_reusable(config, directory, stage_key):
    logging.info("%s: already finished, reusing %s", regime, directory.path)
    return

  steps, eval_steps = config.student.steps, config.eval_settings.steps
  phase = clock.phase(
    workload.regime_key(regime), regime, [progress.Work("steps", "distill", steps, 0)], lines=False
  )
  frozen = (
    programs.frozen("teacher", stage1.teacher_params),
    programs.frozen("oracle", stage1.oracle_params),
  )
  source = sources.source_class(regime)(
    SourceContext(config, programs, frozen[0], pools["distill"], run_dir, clock, phase)
  )
  evaluate = _evaluation(config, programs, stage1, pools["eval"], frozen, source.train_set())
  distiller = _distiller(config, regime, programs, stage1, frozen, directory)
  distiller.evaluate_with(evaluate, lambda steps: eval_steps, PROXY, GOLDEN)
  _detector(config, distiller, source, phase)
  run_start = time.time()
  distiller.train(source, steps, phase=phase)
  step = distiller.step
  final_samples = regime_lib.build_offline(
    programs.host_sampler("student"),
    distiller.params,
    pools["eval"][:REPORT_SAMPLE_ROWS],
    1,
    key(config.seed, Purpose.REPORT_SAMPLES),
  )
  processes.write_on_main(lambda: checkpoints.save_arrays(directory.samples, final_samples))
  if distiller.stop_reason:
    logging.warning("%s: stopped at step %d by %s.", regime, step, distiller.stop_reason)
  processes.write_on_main(
    lambda: checkpoints.write_json(
      directory.done_marker,
      {
        **stage_key.record(),
        "steps": step,
        "stopped_by_detector": distiller.monitor.should_stop,
        "seconds": time.time() - run_start,
        "finished_at": time.time(),  # the report's wall time (regimes side by side overlap)
      },
    )
  )
