"""Stage 2: the student distilled from the teacher under one data regime.

`run_regime` builds the regime's batches (`th_distill.data.regimes`), the fixed evaluation sets
and the monitor, then steps the compiled distillation step from the latest checkpoint (or step
0) to `student.steps`: evaluating at `EvalSettings.steps`, checkpointing every
`checkpoint_every` steps, and stopping cleanly on pre-emption. Results go to `WORKDIR/<regime>/`
(layout in `th_distill.stages.workdir`); a finished regime is reused.

The loop never waits for the devices but where it must: the non-finite guard reads each step's
loss one step late (after the next step is dispatched), and a logged row waits for the steps it
averages.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from th_distill import checkpoints, guards, progress, resume, workload
from th_distill.data import pools as pool_lib
from th_distill.data import regimes as regime_lib
from th_distill.metrics_io import GOLDEN, MetricsWriter, read_metrics
from th_distill.monitor import HackingMonitor
from th_distill.partitioning import Partitioner, is_main_process
from th_distill.stages import workdir as workdir_lib
from th_distill.stages.keys import Purpose, key
from th_distill.stages.programs import Programs, new_train_state
from th_distill.stages.stage1 import Stage1
from th_distill.train import DISTILL_METRICS


def offline_dataset(config: ml_collections.ConfigDict, workdir: str, programs: Programs,
                    stage1: Stage1, pools: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The fixed N x k teacher-generated dataset (`regimes.build_offline`'s arrays), built once
  into `WORKDIR/offline_dataset.npz`."""
  path = os.path.join(workdir, "offline_dataset.npz")
  expected = workdir_lib.fingerprint(config, workdir_lib.offline_sections(config))
  if os.path.exists(path):
    data = checkpoints.load_arrays(path)
    if str(data["fingerprint"]) == expected:
      return data
    raise resume.ConfigChanged(
        f"{path} was built by a different configuration; use a new --workdir, or rerun with "
        "the values it was built with")
  phase = progress.phase(workload.OFFLINE_DATASET)
  data = regime_lib.build_offline(
      phase.counted(programs.host_sampler("teacher"), "samples"), stage1.teacher_params,
      pools["distill"][:config.offline.num_prompts], config.offline.generations_per_prompt,
      key(config.seed, Purpose.OFFLINE_DATA))
  phase.finish()
  data["fingerprint"] = np.asarray(expected)
  workdir_lib.write_on_main(lambda: checkpoints.save_arrays(path, data))
  return data


class MetricWindow:
  """Running sums of the training metrics (`train.DISTILL_METRICS`, and `steps`) since the last
  logged row, as replicated device scalars: part of the checkpointed carry, so a resumed run
  logs exactly what an uninterrupted one would. A step whose loss or gradient norm is not
  finite (skipped under `on_nonfinite = 'skip'`) is left out of the sums."""
  NAMES = DISTILL_METRICS + ("steps",)

  @classmethod
  def empty(cls, partitioner: Partitioner) -> dict[str, jax.Array]:
    return {name: jax.device_put(jnp.zeros((), jnp.float32), partitioner.replicated)
            for name in cls.NAMES}

  @staticmethod
  @jax.jit
  def add(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`sums` with one step's `metrics` added (one compiled program)."""
    counted = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(metrics["train/grad_norm"])
    return {name: total + jnp.where(counted, 1.0 if name == "steps" else metrics[name], 0.0)
            for name, total in sums.items()}

  @staticmethod
  def row(sums: dict[str, jax.Array], seconds: float) -> dict[str, float]:
    """The logged means of the summed steps, the tokens they trained on and their throughput
    over `seconds` of wall time; {} if no step was summed (the row of step 0)."""
    count = float(sums["steps"])
    if not count:
      return {}
    row = {name: float(value) / count for name, value in sums.items()
           if name not in ("steps", "train/tokens")}
    tokens = float(sums["train/tokens"])
    row.update({"train/tokens": tokens, "time/steps_s": seconds,
                "throughput/train_tokens_per_s": tokens / max(seconds, 1e-9)})
    return row


def _batches(config: ml_collections.ConfigDict, workdir: str, regime: str, programs: Programs,
             stage1: Stage1, pools: dict[str, np.ndarray], teacher_params: Any,
             phase: progress.Phase) -> tuple[Callable[[int, Any], Any], dict[str, np.ndarray]]:
  """The regime's `batch_at(step, student_params)` and its training-prompt evaluation set: the
  student's own first training examples (offline), or teacher samples on the first training
  prompts (online)."""
  seed, batch_size = config.seed, config.student.batch_size
  num_train = programs.settings.eval.num_train_prompts
  if regime == "offline":
    data = offline_dataset(config, workdir, programs, stage1, pools)
    return (regime_lib.offline_batches(data, batch_size, seed),
            {k: data[k][:num_train] for k in ("prompts", "responses", "mask")})
  prompts = pool_lib.online_prompts(config, pools)
  batch_at = regime_lib.online_batches(
      regime, prompts, batch_size, key(seed, Purpose.ONLINE), programs.sampler("teacher"),
      programs.sampler("student"), teacher_params, config.mixture.student_fraction)
  train_set = regime_lib.build_offline(
      phase.counted(programs.host_sampler("teacher"), "train-prompt samples"), teacher_params,
      prompts[:num_train], 1, key(seed, Purpose.TRAIN_PROMPT_SET))
  return batch_at, train_set


def run_regime(config: ml_collections.ConfigDict, workdir: str, regime: str, programs: Programs,
               stage1: Stage1, pools: dict[str, np.ndarray]) -> None:
  """Distils the student under `regime` into `WORKDIR/<regime>/`, resuming an unfinished run.
  Raises workdir.Preempted after a pre-emption (checkpointed), guards.NonFiniteStep after a
  non-finite step under `on_nonfinite = 'stop'`, resume.ConfigChanged if the directory holds
  another configuration's run."""
  directory = workdir_lib.regime_dir(workdir, regime)
  marker, started = (os.path.join(directory, name) for name in ("done.json", "started.json"))
  metrics_path = os.path.join(directory, "metrics.jsonl")
  stage_key = workdir_lib.StageKey.of(config, workdir_lib.regime_sections(config))
  settings, partitioner = programs.settings, programs.partitioner
  steps, eval_steps = settings.distill.optimizer.steps, set(settings.eval.steps)
  if os.path.exists(marker):
    stage_key.check(marker)
    last = checkpoints.read_json(marker)["steps"]
    guards.check_rows(metrics_path, {s for s in eval_steps if s <= last},
                      f"delete {directory} to run the regime again")
    logging.info("%s: already finished, reusing %s", regime, directory)
    return
  phase = progress.phase(workload.regime_key(regime), regime,
                         [progress.Work("steps", "distill", steps, 0)], lines=False)
  # An unfinished regime resumes under the config it started with only.
  if os.path.exists(started):
    stage_key.check(started)
  else:
    workdir_lib.write_on_main(lambda: workdir_lib.write_marker(started, stage_key.record()))

  frozen = (programs.frozen("teacher", stage1.teacher_params),
            programs.frozen("oracle", stage1.oracle_params))
  batch_at, train_set = _batches(config, workdir, regime, programs, stage1, pools, frozen[0],
                                 phase)
  fixed_sets = {"eval_oracle": stage1.eval_sets["oracle"],
                "eval_teacher": stage1.eval_sets["teacher"], "train_teacher": train_set}
  evaluate_set, sample_student = programs.evaluator("student"), programs.host_sampler("student")

  def evaluate(student_params: Any, step: int) -> dict[str, float]:
    student_samples = regime_lib.build_offline(
        sample_student, student_params, pools["eval"], 1,
        jax.random.fold_in(key(config.seed, Purpose.EVAL_STUDENT), step))
    results = {}
    for name, data in {**fixed_sets, "eval_student": student_samples}.items():
      results.update(evaluate_set(student_params, *frozen, data, name))
    return results

  # The checkpointed carry: the train state and the metric sums since the last logged row.
  state = new_train_state(partitioner, programs.models.student, stage1.student_init_params,
                          settings.distill.optimizer.build())
  carry = {"state": state, "window": MetricWindow.empty(partitioner)}
  checkpointer = checkpoints.RunCheckpointer(os.path.join(directory, "checkpoints"))
  carry = checkpointer.restore_latest(carry) or carry
  start_step = int(carry["state"].step)
  for item, done in (("steps", start_step), ("generated batches", start_step),
                     ("evaluations", sum(s < start_step for s in eval_steps))):
    phase.skip(item, done)
  logging.info("%s: steps %d..%d", phase.title, start_step, steps)
  guards.check_rows(metrics_path, {s for s in eval_steps if s < start_step},
                    f"delete {directory} to run the regime again from step 0")
  writer = MetricsWriter(directory, resume_step=start_step, enabled=is_main_process())
  monitor = HackingMonitor.from_config(
      config.detection, directory, GOLDEN,
      history=[r for r in read_metrics(writer.path) if r["step"] < start_step])
  distill_step = programs.distill_step()
  guard = guards.StepWatch(regime, settings.distill.on_nonfinite)
  pending: list[tuple[int, Any]] = []  # the last step's metrics, not yet checked by the guard

  def settle() -> None:
    while pending:
      guard.check(*pending.pop(), checkpointer)

  run_start = since = time.time()
  step_seconds = 0.0
  with workdir_lib.PreemptionWatch() as preemption:
    for step in range(start_step, steps + 1):
      # Checked before the evaluation, so a resumed run re-logs this step's row identically.
      if preemption.reached(step) and step > start_step:
        settle()
        checkpointer.save(step, carry)
        checkpointer.close()
        writer.close()
        raise workdir_lib.Preempted(regime, step)
      state = carry["state"]
      if step in eval_steps:
        jax.block_until_ready(carry)  # the row's timer covers finished steps only
        settle()
        step_seconds += time.time() - since
        eval_start = time.time()
        row = evaluate(state.params, step)
        trained = MetricWindow.row(carry["window"], step_seconds)
        if trained:
          row.update(trained)
          row["time/eval_s"] = time.time() - eval_start
          carry["window"], step_seconds = MetricWindow.empty(partitioner), 0.0
        row.update(monitor.observe(step, row, state.params))
        writer.write(step, row)
        phase.advance("evaluations")
        phase.log_line(f", golden {row['eval_oracle/golden/fkl']:.4f} proxy "
                       f"{row['eval_teacher/proxy/fkl']:.4f}")
        since = time.time()
      if step == steps or monitor.should_stop:
        break
      batch = partitioner.shard_batch(batch_at(step, state.params))
      if regime != "offline":
        phase.advance("generated batches")
      state, metrics = distill_step(state, *frozen, batch,
                                    jax.random.fold_in(key(config.seed, Purpose.TRAIN_DROPOUT),
                                                       step))
      settle()  # the previous step's, now that this one is dispatched
      pending.append((step, metrics))
      carry = {"state": state, "window": MetricWindow.add(carry["window"], metrics)}
      phase.advance("steps")
      if (step + 1) % settings.checkpoint_every == 0:
        settle()
        checkpointer.save(step + 1, carry)
  settle()
  checkpointer.save(step, carry)
  checkpointer.close()
  writer.close()
  phase.finish()
  if monitor.should_stop:
    logging.warning("%s: stopped at step %d by the hacking detector (detection.on_detect = "
                    "'stop').", regime, step)
  workdir_lib.write_on_main(lambda: checkpoints.write_json(marker, {
      "fingerprint": stage_key.fingerprint, "steps": step,
      "stopped_by_detector": monitor.should_stop, "seconds": time.time() - run_start}))
