"""Stage 2: the student distilled from the teacher under one data regime.

`run_regime` builds the regime's batches (`th_distill.data.regimes`), the fixed evaluation sets
and the monitor, then steps the compiled distillation step from the latest checkpoint (or step
0) to `student.steps`: evaluating at `EvalSettings.steps`, checkpointing every
`checkpoint_every` steps, and stopping cleanly on pre-emption. Results go to `WORKDIR/<regime>/`
(layout in `th_distill.rundir.records`); a finished regime is reused.

The loop never waits for the devices but where it must: the non-finite guard reads each step's
loss one step late (after the next step is dispatched), and a logged row waits for the steps it
averages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from th_distill.data import pools as pool_lib
from th_distill.data import regimes as regime_lib
from th_distill.detection.monitor import HackingMonitor
from th_distill.observing import progress
from th_distill.observing.metric_names import (
  DISTILL_METRICS,
  EVAL_ORACLE,
  EVAL_STUDENT,
  EVAL_TEACHER,
  GOLDEN,
  PROXY,
  TRAIN_TEACHER,
)
from th_distill.observing.metrics_io import MetricsWriter, read_metrics
from th_distill.partitioning import Partitioner, is_main_process
from th_distill.planning import workload
from th_distill.rundir import checkpoints
from th_distill.rundir import records as workdir_lib
from th_distill.stages.keys import Purpose, key
from th_distill.stages.stage1 import Stage1
from th_distill.training import guards
from th_distill.training.programs import Programs, new_train_state


def offline_dataset(
  config: ml_collections.ConfigDict,
  workdir: str,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """The fixed N x k teacher-generated dataset (`regimes.build_offline`'s arrays), built once
  into `WORKDIR/offline_dataset.npz`."""
  path = os.path.join(workdir, "offline_dataset.npz")
  stage_key = workdir_lib.StageKey.of(config, workdir_lib.offline_sections(config))
  if os.path.exists(path):
    data = checkpoints.load_arrays(path)
    stage_key.check_arrays(data, path)
    return data
  phase = progress.phase(workload.OFFLINE_DATASET)
  data = regime_lib.build_offline(
    phase.counted(programs.host_sampler("teacher"), "samples"),
    stage1.teacher_params,
    pools["distill"][: config.offline.num_prompts],
    config.offline.generations_per_prompt,
    key(config.seed, Purpose.OFFLINE_DATA),
  )
  phase.finish()
  data.update(stage_key.as_arrays())
  workdir_lib.write_on_main(lambda: checkpoints.save_arrays(path, data))
  return data


def _empty_sums(names: tuple[str, ...]) -> dict[str, jax.Array]:
  return {name: jnp.zeros((), jnp.float32) for name in names}


def _add_step(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  counted = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(metrics["train/grad_norm"])
  return {
    name: total + jnp.where(counted, 1.0 if name == "steps" else metrics[name], 0.0)
    for name, total in sums.items()
  }


class MetricSums:
  """Running sums of the training metrics (`DISTILL_METRICS`, and `steps`) since the last
  logged row, as replicated device scalars: part of the checkpointed carry, so a resumed run
  logs exactly what an uninterrupted one would. A step whose loss or gradient norm is not
  finite (skipped under `on_nonfinite = 'skip'`) is left out of the sums.

  `empty()` -> {name: 0}; `add(sums, metrics)` -> sums with one step's metrics added; both
  compiled once, for the mesh."""

  NAMES = DISTILL_METRICS + ("steps",)

  def __init__(self, partitioner: Partitioner):
    replicated = partitioner.replicated
    self.empty = partitioner.jit(
      _empty_sums, in_shardings=(), out_shardings=replicated, static=(self.NAMES,)
    )
    self.add = partitioner.jit(
      _add_step, in_shardings=(replicated, replicated), out_shardings=replicated
    )

  @staticmethod
  def row(sums: dict[str, jax.Array], seconds: float) -> dict[str, float]:
    """The logged means of the summed steps, the tokens they trained on and their throughput
    over `seconds` of wall time; {} if no step was summed (the row of step 0)."""
    count = float(sums["steps"])
    if not count:
      return {}
    row = {
      name: float(value) / count
      for name, value in sums.items()
      if name not in ("steps", "train/tokens")
    }
    tokens = float(sums["train/tokens"])
    row.update(
      {
        "train/tokens": tokens,
        "time/steps_s": seconds,
        "throughput/train_tokens_per_s": tokens / max(seconds, 1e-9),
      }
    )
    return row


def _batches(
  config: ml_collections.ConfigDict,
  workdir: str,
  regime: str,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, np.ndarray],
  teacher_params: Any,
  phase: progress.Phase,
) -> tuple[Callable[[int, Any], Any], dict[str, np.ndarray]]:
  """The regime's `batch_at(step, student_params)` and its training-prompt evaluation set: the
  student's own first training examples (offline), or teacher samples on the first training
  prompts (online)."""
  seed, batch_size = config.seed, config.student.batch_size
  num_train = programs.settings.eval.num_train_prompts
  if regime == "offline":
    data = offline_dataset(config, workdir, programs, stage1, pools)
    return (
      regime_lib.offline_batches(data, batch_size, seed),
      {k: data[k][:num_train] for k in ("prompts", "responses", "mask")},
    )
  prompts = pool_lib.online_prompts(config, pools)
  batch_at = regime_lib.online_batches(
    regime,
    prompts,
    batch_size,
    key(seed, Purpose.ONLINE),
    programs.sampler("teacher"),
    programs.sampler("student"),
    teacher_params,
    config.mixture.student_fraction,
  )
  train_set = regime_lib.build_offline(
    phase.counted(programs.host_sampler("teacher"), "train-prompt samples"),
    teacher_params,
    prompts[:num_train],
    1,
    key(seed, Purpose.TRAIN_PROMPT_SET),
  )
  return batch_at, train_set


def _evaluation(
  config: ml_collections.ConfigDict,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, np.ndarray],
  frozen: tuple[Any, Any],
  train_set: dict[str, np.ndarray],
) -> Callable[[Any, int], dict[str, float]]:
  """`evaluate(student_params, step) -> {name: value}`: the student against the teacher and
  the oracle on the fixed sets (oracle and teacher samples on held-out prompts, the
  training-prompt set) and on its own fresh samples of the held-out prompts."""
  fixed_sets = {
    EVAL_ORACLE: stage1.eval_sets["oracle"],
    EVAL_TEACHER: stage1.eval_sets["teacher"],
    TRAIN_TEACHER: train_set,
  }
  evaluate_set, sample_student = programs.evaluator("student"), programs.host_sampler("student")
  student_key = key(config.seed, Purpose.EVAL_STUDENT)

  def evaluate(student_params: Any, step: int) -> dict[str, float]:
    student_samples = regime_lib.build_offline(
      sample_student, student_params, pools["eval"], 1, jax.random.fold_in(student_key, step)
    )
    results = {}
    for name, data in {**fixed_sets, EVAL_STUDENT: student_samples}.items():
      results.update(evaluate_set(student_params, *frozen, data, name))
    return results

  return evaluate


class _Loop:
  """The training loop's state between steps: the checkpointed carry (train state and
  `MetricSums` sums), the checkpointer, the metrics writer, the monitor and the non-finite
  guard, which reads each step's metrics one step late (`settle` checks what is pending)."""

  def __init__(
    self,
    regime: str,
    directory: str,
    config: ml_collections.ConfigDict,
    programs: Programs,
    initial_params: Any,
    eval_steps: set[int],
  ):
    partitioner = programs.partitioner
    state = new_train_state(
      partitioner,
      programs.models.student,
      initial_params,
      programs.settings.distill.optimizer.build(),
    )
    self.sums = MetricSums(partitioner)
    self.carry = {"state": state, "metric_sums": self.sums.empty()}
    self.checkpointer = checkpoints.RunCheckpointer(os.path.join(directory, "checkpoints"))
    self.carry = self.checkpointer.restore_latest(self.carry) or self.carry
    self.start_step = int(self.carry["state"].step)
    guards.check_rows(
      os.path.join(directory, "metrics.jsonl"),
      {s for s in eval_steps if s < self.start_step},
      f"delete {directory} to run the regime again from step 0",
    )
    self.writer = MetricsWriter(directory, resume_step=self.start_step, enabled=is_main_process())
    self.monitor = HackingMonitor.from_config(
      config.detection,
      directory,
      GOLDEN,
      history=[r for r in read_metrics(self.writer.path) if r["step"] < self.start_step],
    )
    self.guard = guards.StepWatch(regime, programs.settings.distill.on_nonfinite)
    self.pending: list[tuple[int, Any]] = []
    self.step_seconds, self.since = 0.0, time.time()
    self.eval_start = self.since
    self.logged = False  # whether the carry's sums were logged (they start again next step)

  def settle(self) -> None:
    """Runs the guard on the step whose metrics are pending (raises NonFiniteStep)."""
    while self.pending:
      self.guard.check(*self.pending.pop(), self.checkpointer)

  def train(
    self, step: int, distill_step: Callable, frozen: tuple[Any, Any], batch: Any, rng: jax.Array
  ) -> None:
    """Dispatches step `step`, then checks the previous one."""
    state, metrics = distill_step(self.carry["state"], *frozen, batch, rng)
    self.settle()
    self.pending.append((step, metrics))
    sums = self.sums.empty() if self.logged else self.carry["metric_sums"]
    self.carry, self.logged = {"state": state, "metric_sums": self.sums.add(sums, metrics)}, False

  def pause(self) -> None:
    """Waits for the dispatched steps (the row's timers cover finished steps) before an
    evaluation."""
    jax.block_until_ready(self.carry)
    self.settle()
    self.eval_start = time.time()
    self.step_seconds += self.eval_start - self.since

  def log(self, step: int, evaluation: dict[str, float]) -> dict[str, float]:
    """Writes the row of `step` (after `pause`): `evaluation`, the training means since the
    last row and the monitor's metrics."""
    row = dict(evaluation)
    trained = MetricSums.row(self.carry["metric_sums"], self.step_seconds)
    if trained:
      row.update(trained)
      row["time/eval_s"] = time.time() - self.eval_start
      # The sums start again at the next step; until then the carry (a checkpoint taken now)
      # keeps them, so a run resumed here logs this row again identically.
      self.logged, self.step_seconds = True, 0.0
    row.update(self.monitor.observe(step, row, self.carry["state"].params))
    self.writer.write(step, row)
    self.since = time.time()
    return row

  def save(self, step: int) -> None:
    self.settle()  # a poisoned state is never saved
    self.checkpointer.save(step, self.carry)

  def close(self, step: int) -> None:
    self.save(step)
    self.checkpointer.close()
    self.writer.close()


def run_regime(
  config: ml_collections.ConfigDict,
  workdir: str,
  regime: str,
  programs: Programs,
  stage1: Stage1,
  pools: dict[str, np.ndarray],
) -> None:
  """Distils the student under `regime` into `WORKDIR/<regime>/`, resuming an unfinished run.
  Raises workdir.Preempted after a pre-emption (checkpointed), guards.NonFiniteStep after a
  non-finite step under `on_nonfinite = 'stop'`, resume.ConfigChanged if the directory holds
  another configuration's run."""
  directory = workdir_lib.regime_dir(workdir, regime)
  marker, started = (os.path.join(directory, name) for name in ("done.json", "started.json"))
  stage_key = workdir_lib.StageKey.of(config, workdir_lib.regime_sections(config))
  settings = programs.settings
  steps, eval_steps = settings.distill.optimizer.steps, set(settings.eval.steps)
  if os.path.exists(marker):
    stage_key.check(started if os.path.exists(started) else marker)  # started.json: the fields
    guards.check_rows(
      os.path.join(directory, "metrics.jsonl"),
      {s for s in eval_steps if s <= checkpoints.read_json(marker)["steps"]},
      f"delete {directory} to run the regime again",
    )
    logging.info("%s: already finished, reusing %s", regime, directory)
    return
  # An unfinished regime resumes under the config it started with only.
  if workdir_lib.exists_on_main(started):
    stage_key.check(started)
  else:
    workdir_lib.write_on_main(lambda: workdir_lib.write_marker(started, stage_key.record()))

  phase = progress.phase(
    workload.regime_key(regime), regime, [progress.Work("steps", "distill", steps, 0)], lines=False
  )
  frozen = (
    programs.frozen("teacher", stage1.teacher_params),
    programs.frozen("oracle", stage1.oracle_params),
  )
  batch_at, train_set = _batches(config, workdir, regime, programs, stage1, pools, frozen[0], phase)
  evaluate = _evaluation(config, programs, stage1, pools, frozen, train_set)
  loop = _Loop(regime, directory, config, programs, stage1.student_init_params, eval_steps)
  for item, done in (
    ("steps", loop.start_step),
    ("generated batches", loop.start_step),
    ("evaluations", sum(s < loop.start_step for s in eval_steps)),
  ):
    phase.skip(item, done)
  logging.info("%s: steps %d..%d", phase.title, loop.start_step, steps)
  distill_step, dropout = programs.distill_step(), key(config.seed, Purpose.TRAIN_DROPOUT)
  run_start = time.time()
  with workdir_lib.PreemptionWatch() as preemption:
    for step in range(loop.start_step, steps + 1):
      # Checked before the evaluation, so a resumed run re-logs this step's row identically.
      if preemption.reached(step) and step > loop.start_step:
        loop.close(step)
        raise workdir_lib.Preempted(regime, step)
      if step in eval_steps:
        loop.pause()
        row = loop.log(step, evaluate(loop.carry["state"].params, step))
        phase.advance("evaluations")
        phase.log_line(f", golden {row[GOLDEN]:.4f} proxy {row[PROXY]:.4f}")
      if step == steps or loop.monitor.should_stop:
        break
      batch = programs.partitioner.shard_batch(batch_at(step, loop.carry["state"].params))
      if regime != "offline":
        phase.advance("generated batches")
      loop.train(step, distill_step, frozen, batch, jax.random.fold_in(dropout, step))
      phase.advance("steps")
      if (step + 1) % settings.checkpoint_every == 0:
        loop.save(step + 1)
  loop.close(step)
  phase.finish()
  if loop.monitor.should_stop:
    logging.warning(
      "%s: stopped at step %d by the hacking detector (detection.on_detect = 'stop').", regime, step
    )
  workdir_lib.write_on_main(
    lambda: checkpoints.write_json(
      marker,
      {
        **stage_key.record(),
        "steps": step,
        "stopped_by_detector": loop.monitor.should_stop,
        "seconds": time.time() - run_start,
      },
    )
  )
