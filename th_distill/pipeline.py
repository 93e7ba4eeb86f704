"""The controlled experiment, stage by stage, each stage cached in the workdir.

Stage 1 (`run_stage1`, cached in `WORKDIR/stage1/` or a directory shared by a study's runs):
the oracle (synthetic or a checkpoint) samples responses to the oracle prompts; the teacher (a
random init or `teacher.checkpoint`) is trained on them by SFT; the student's initial parameters
(a random init or `student.checkpoint`) are used as they are (`student.init = 'scratch'`) or
after an SFT on the same data (`'sft'`). Checkpoints are local Hugging Face T5 directories or
T5X checkpoints, checked against the `*.model` configs. The fixed evaluation sets (oracle and
teacher samples on held-out prompts) are built here too, and the teacher's own golden distance
to the oracle is recorded.

Stage 2 (`run_regime`, one directory per regime): the student is distilled from the teacher under
one data regime (`th_distill.data.regimes`), evaluated at `eval_schedule.evaluation_steps`, checkpointed
every `checkpoint_every` steps, and resumed from its latest checkpoint if the run was stopped.

Randomness: every key is `fold_in` of the config seed with a fixed purpose id (and the step), so a
run is reproducible and a resumed run sees the batches and samples an uninterrupted one would.

Devices: every array lives on the `Partitioner`'s mesh (parameters and optimiser state sharded by
the logical rules, batches split over data x fsdp); every process runs the same code, process 0
alone writes metrics, markers and datasets, and checkpoints are written by all collectively.
Pre-emption: SIGTERM makes `run_regime` checkpoint at the current step and raise `Preempted`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from th_distill import checkpoints, guards, progress, resume, sampling, workload
from th_distill.errors import EX_TEMPFAIL, RunError
from th_distill.partitioning import Partitioner, is_main_process, pad_rows
from th_distill.config import to_t5_config
from th_distill.data import prompts as prompt_lib
from th_distill.data import regimes as regime_lib
from th_distill.eval_schedule import evaluation_steps
from th_distill.metric_names import DISTILL_METRICS, GOLDEN
from th_distill.metrics_io import MetricsWriter, read_metrics
from th_distill.models import T5, init_params, pretrained
from th_distill.monitor import HackingMonitor
from th_distill.oracle import calibrate_oracle
from th_distill.train import (Batch, TrainState, create_train_state, make_distill_step,
                              make_eval_sums, make_optimizer, make_sft_step, reduce_eval_sums)

# Purpose ids folded into the seed key: one independent stream per use.
_ORACLE_INIT, _ORACLE_CALIBRATE, _ORACLE_DATA, _TEACHER_INIT, _TEACHER_TRAIN = 1, 2, 3, 4, 5
_STUDENT_INIT, _STUDENT_SFT, _EVAL_SETS, _OFFLINE_DATA, _ONLINE = 6, 7, 8, 9, 10
_TRAIN_DROPOUT, _EVAL_STUDENT, _TRAIN_PROMPT_SET = 11, 12, 13

STAGE1_SECTIONS = ("seed", "task", "prompts", "oracle", "teacher", "student.model",
                   "student.checkpoint", "student.init", "student.sft_steps", "sampling")


def _key(seed: int, purpose: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)


def fingerprint_fields(config: ml_collections.ConfigDict,
                       sections: tuple[str, ...]) -> dict[str, Any]:
  """{section: value} of the named config sections (dotted paths)."""
  def lookup(path):
    value = config
    for part in path.split("."):
      value = value[part]
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return {s: lookup(s) for s in sections}


def fingerprint(config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> str:
  """Hash of the named config sections (dotted paths): what a cached stage depends on."""
  text = json.dumps(fingerprint_fields(config, sections), sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Models:
  oracle: T5
  teacher: T5
  student: T5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Models":
    return cls(*(T5(to_t5_config(config[name].model)) for name in ("oracle", "teacher", "student")))


# The compiled programs of a run (`Partitioner.jit` results: call them, or `.lower` them for
# abstract arguments as `th_distill.plan` does).


def sampler_program(model: T5, config: ml_collections.ConfigDict,
                    partitioner: Partitioner) -> Callable:
  """`(params, prompts [B, Li] int32, keys [B, 2] uint32) -> SampleOutput` of [B, Lt]: the
  config's sampling settings, compiled for the mesh with inputs and outputs split along B."""
  settings = dict(max_length=config.task.response_length, temperature=config.sampling.temperature,
                  top_k=config.sampling.top_k, top_p=config.sampling.top_p)
  rows = partitioner.batch_sharding(2)
  return partitioner.jit(
      lambda params, prompts, keys: sampling.generate(model, params, prompts, keys, **settings),
      in_shardings=(partitioner.param_shardings(model), rows, rows),
      out_shardings=sampling.SampleOutput(rows, rows, rows),
      key=("sample", model, tuple(sorted(settings.items()))))


def sft_optimizer(section: ml_collections.ConfigDict) -> Any:
  """The optimiser of an SFT stage (`config.teacher`, or the student's SFT section)."""
  return make_optimizer(section.learning_rate, section.warmup_steps, section.steps,
                        section.schedule)


def sft_program(model: T5, optimizer: Any, partitioner: Partitioner) -> Callable:
  """The SFT step `(state, batch, rng) -> (state, metrics)` compiled for the mesh (the state
  donated)."""
  state_shardings = partitioner.state_shardings(model, optimizer)
  return partitioner.jit(
      make_sft_step(model),
      in_shardings=(state_shardings, _batch_shardings(partitioner), partitioner.replicated),
      out_shardings=(state_shardings, partitioner.replicated), donate_argnums=0,
      key=("sft_step", model, optimizer))


def eval_program(models: Models, config: ml_collections.ConfigDict, partitioner: Partitioner,
                 student: T5) -> Callable:
  """`(student_params, teacher_params, oracle_params, batch) -> {name: sum}` (`eval_sums` of
  `student` against the teacher and the oracle) compiled for the mesh."""
  return partitioner.jit(
      make_eval_sums(student, models.teacher, models.oracle, config.sequence_chunks),
      in_shardings=(partitioner.param_shardings(student),
                    partitioner.param_shardings(models.teacher),
                    partitioner.param_shardings(models.oracle), _batch_shardings(partitioner)),
      out_shardings=partitioner.replicated,
      key=("eval_sums", student, models.teacher, models.oracle, config.sequence_chunks))


def student_optimizer(config: ml_collections.ConfigDict) -> Any:
  """The stage-2 student's optimiser."""
  student = config.student
  return make_optimizer(student.learning_rate, student.warmup_steps, student.steps,
                        student.schedule, student.weight_decay, student.grad_clip)


def distill_program(models: Models, config: ml_collections.ConfigDict,
                    partitioner: Partitioner) -> Callable:
  """The distillation step `(state, teacher_params, oracle_params, batch, rng) -> (state,
  metrics)` of the config's loss and memory settings, compiled for the mesh (state donated)."""
  optimizer = student_optimizer(config)
  state_shardings = partitioner.state_shardings(models.student, optimizer)
  settings = (config.loss.name, config.loss.beta, config.loss.normalized,
              config.loss.temperature, config.student.micro_batches, config.sequence_chunks)
  return partitioner.jit(
      guards.skip_nonfinite(
          make_distill_step(models.student, models.teacher, models.oracle, *settings),
          config.on_nonfinite),
      in_shardings=(state_shardings, partitioner.param_shardings(models.teacher),
                    partitioner.param_shardings(models.oracle), _batch_shardings(partitioner),
                    partitioner.replicated),
      out_shardings=(state_shardings, partitioner.replicated), donate_argnums=0,
      key=("distill_step", models.student, models.teacher, models.oracle, optimizer, settings,
           config.on_nonfinite))


def make_sampler(model: T5, config: ml_collections.ConfigDict,
                 partitioner: Partitioner) -> regime_lib.SampleFn:
  """`fn(params, prompts [B, Li], rng) -> (tokens [B, Lt], mask [B, Lt] float32)`: the config's
  sampling settings, compiled for the mesh. Prompts may be host arrays; B must split over the
  data-parallel devices. Outputs are global device arrays split along B."""
  compiled = sampler_program(model, config, partitioner)

  def fn(params, prompts, rng):
    prompts = partitioner.shard_batch(prompts)
    keys = partitioner.shard_batch(np.asarray(sampling.example_keys(rng, prompts.shape[0])))
    out = compiled(params, prompts, keys)
    return out.tokens, out.mask.astype(jnp.float32)

  return fn


def host_sampler(sample: regime_lib.SampleFn, partitioner: Partitioner) -> regime_lib.SampleFn:
  """`sample` for any number of host prompts, with numpy results on every process: rows are
  padded to the data-parallel size (padding rows never change the real rows' samples: each row
  has its own key) and the outputs gathered and trimmed."""
  def fn(params, prompts, rng):
    padded, rows = pad_rows({"prompts": np.asarray(prompts)}, partitioner.data_parallel_size)
    tokens, mask = sample(params, padded["prompts"], rng)
    return partitioner.to_host(tokens)[:rows], partitioner.to_host(mask)[:rows]
  return fn


def prompt_pools(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Disjoint prompt pools {'oracle', 'distill', 'eval'}: [size, prompt_length] int32 each, from
  the synthetic task or a real one (`task.source = 'seqio'`, zero-padded)."""
  sizes = dict(oracle=config.prompts.num_oracle, distill=config.prompts.num_distill,
               eval=config.prompts.num_eval)
  task = config.task
  if task.source == "seqio":
    from th_distill.data import seqio_tasks  # imports TensorFlow: real tasks only
    return seqio_tasks.prompt_pools(task, sizes)
  pool = prompt_lib.zipf_prompts(config.seed, sum(sizes.values()), task.prompt_length,
                                 task.vocab_size, task.zipf_exponent)
  return prompt_lib.split_pools(pool, sizes)


def online_prompts(config: ml_collections.ConfigDict,
                   pools: dict[str, np.ndarray]) -> np.ndarray:
  """The prompts [P, Li] the online regimes draw from: the offline arm's N prompts
  (`online.prompts = 'offline'`, so only the responses differ between the arms) or the whole
  distillation pool (`'pool'`)."""
  if config.online.prompts == "offline":
    return pools["distill"][:config.offline.num_prompts]
  return pools["distill"]


def _write_on_main(write: Callable[[], None]) -> None:
  """Runs `write` on process 0 only, then waits until every process gets there (so nobody reads
  a file before it exists)."""
  if is_main_process():
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("th_distill_write")


def _batch_shardings(partitioner: Partitioner) -> Batch:
  rows = partitioner.batch_sharding(2)
  return Batch(prompts=rows, responses=rows, mask=rows)


def new_train_state(partitioner: Partitioner, model: T5, params: Any, optimizer: Any
                    ) -> tuple[TrainState, Any]:
  """A fresh sharded train state on a copy of `params`, and the state's shardings."""
  shardings = partitioner.state_shardings(model, optimizer)
  create = partitioner.jit(lambda p: create_train_state(p, optimizer),
                           in_shardings=(partitioner.param_shardings(model),),
                           out_shardings=shardings, key=("train_state", model, optimizer))
  return create(params), shardings


def train_sft(model: T5, params: Any, data: dict[str, np.ndarray], section, seed: int,
              key: jax.Array, name: str, partitioner: Partitioner) -> tuple[Any, dict[str, float]]:
  """Cross-entropy training of `params` on `data` for `section.steps` steps."""
  optimizer = sft_optimizer(section)
  state, _ = new_train_state(partitioner, model, params, optimizer)
  step_fn = sft_program(model, optimizer, partitioner)
  batches = regime_lib.offline_batches(data, section.batch_size, seed)
  metrics: dict[str, Any] = {}
  phase = progress.phase(f"{name} SFT", work=[progress.Work("steps", "sft", section.steps, 0)])
  for step in range(section.steps):
    state, metrics = step_fn(state, partitioner.shard_batch(batches(step)),
                             jax.random.fold_in(key, step))
    jax.block_until_ready(metrics)  # the step's time is its own (see th_distill.progress)
    phase.advance("steps", detail=lambda: f"loss {float(metrics['sft/loss']):.4f}")
  final = {k: float(v) for k, v in metrics.items()}
  phase.finish()
  if not np.isfinite(final.get("sft/loss", 0.0)):
    raise guards.NonFiniteStep(f"{name} SFT diverged: loss {final['sft/loss']} after "
                               f"{section.steps} steps; lower {name}.learning_rate")
  return state.params, final


def _checkpoint_params(config: ml_collections.ConfigDict, name: str, model: T5,
                       partitioner: Partitioner) -> Any:
  """`<name>.checkpoint` (a local Hugging Face or T5X checkpoint) as `model`'s sharded
  parameters."""
  path = config[name].checkpoint
  try:
    params = pretrained.load_params(path, model.cfg)
  except ValueError as e:
    raise ValueError(f"{name}.checkpoint = {path!r} does not fit {name}.model: {e}") from None
  return jax.device_put(params, partitioner.param_shardings(model))


def _initial_params(config: ml_collections.ConfigDict, name: str, model: T5,
                    partitioner: Partitioner, key: jax.Array) -> Any:
  """The teacher's or student's initial parameters: `<name>.checkpoint` or a random init."""
  if config[name].checkpoint:
    return _checkpoint_params(config, name, model, partitioner)
  return partitioner.init_params(model, key)


@dataclasses.dataclass
class Stage1:
  oracle_params: Any
  teacher_params: Any
  student_init_params: Any
  eval_sets: dict[str, dict[str, np.ndarray]]  # 'oracle' / 'teacher' samples on eval prompts
  info: dict[str, Any]


def _evaluator(models: Models, config: ml_collections.ConfigDict, partitioner: Partitioner,
               student: T5) -> Callable[..., dict[str, float]]:
  """`evaluate(student_params, teacher_params, oracle_params, data, prefix)`: per-token and
  per-sequence proxy/golden divergences of `student` on the host dataset `data` (prompts,
  responses, mask), in chunks of `eval.batch_size` rows padded to the data-parallel size."""
  eval_sums = eval_program(models, config, partitioner, student)

  def evaluate(student_params, teacher_params, oracle_params, data, prefix):
    totals: dict[str, float] = {}
    size = config.eval.batch_size
    for start in range(0, len(data["prompts"]), size):
      chunk, _ = pad_rows({k: data[k][start:start + size] for k in ("prompts", "responses",
                                                                  "mask")},
                          partitioner.data_parallel_size)
      sums = eval_sums(student_params, teacher_params, oracle_params,
                       partitioner.shard_batch(Batch(**chunk)))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + float(value)
    return reduce_eval_sums(totals, prefix)

  return evaluate


def run_stage1(config: ml_collections.ConfigDict, directory: str, models: Models,
               pools: dict[str, np.ndarray], partitioner: Partitioner) -> Stage1:
  """Oracle, oracle data, teacher SFT, student initialisation and the fixed eval sets, cached in
  `directory` (usually WORKDIR/stage1; studies share one per seed between their runs)."""
  marker = os.path.join(directory, "info.json")
  expected = fingerprint(config, STAGE1_SECTIONS)
  fields = fingerprint_fields(config, STAGE1_SECTIONS)
  if os.path.exists(marker):
    resume.check_marker(marker, expected, fields)
    logging.info("Stage 1: reusing %s", directory)
    params = {name: checkpoints.load_params(
        os.path.join(directory, name), partitioner.abstract_params(getattr(models, model)))
              for name, model in (("oracle", "oracle"), ("teacher", "teacher"),
                                  ("student_init", "student"))}
    return Stage1(
        oracle_params=params["oracle"], teacher_params=params["teacher"],
        student_init_params=params["student_init"],
        eval_sets={name: checkpoints.load_arrays(os.path.join(directory, f"eval_{name}.npz"))
                   for name in ("oracle", "teacher")},
        info=checkpoints.read_json(marker))

  seed, start = config.seed, time.time()
  info: dict[str, Any] = {"fingerprint": expected, "fields": fields}
  sample_oracle = make_sampler(models.oracle, config, partitioner)
  if config.oracle.source == "synthetic":
    phase = progress.phase(workload.ORACLE_CALIBRATION)
    oracle_params, calibration = calibrate_oracle(
        models.oracle, partitioner.init_params(models.oracle, _key(seed, _ORACLE_INIT)),
        phase.counted(sample_oracle, "sampling passes", per_row=False),
        pools["eval"][:workload.calibration_rows(config, partitioner.data_parallel_size)],
        _key(seed, _ORACLE_CALIBRATE), config.oracle.target_entropy, config.oracle.weight_scale)
    phase.finish()
    info["oracle"] = calibration
    logging.info("Stage 1: synthetic oracle, logit scale %.3f, entropy %.3f nats/token",
                 calibration["logit_scale"], calibration["entropy"])
  else:
    oracle_params = _checkpoint_params(config, "oracle", models.oracle, partitioner)
    info["oracle"] = {"checkpoint": config.oracle.checkpoint}

  sample_oracle_host = host_sampler(sample_oracle, partitioner)
  phase = progress.phase(workload.ORACLE_SAMPLES)
  oracle_data = regime_lib.build_offline(phase.counted(sample_oracle_host, "samples"),
                                         oracle_params, pools["oracle"], 1,
                                         _key(seed, _ORACLE_DATA))
  phase.finish()
  teacher_params, info["teacher_sft"] = train_sft(
      models.teacher, _initial_params(config, "teacher", models.teacher, partitioner,
                                      _key(seed, _TEACHER_INIT)),
      oracle_data, config.teacher, seed, _key(seed, _TEACHER_TRAIN), "teacher", partitioner)
  student_params = _initial_params(config, "student", models.student, partitioner,
                                   _key(seed, _STUDENT_INIT))
  if config.student.init == "sft":
    sft = config.student.copy_and_resolve_references()
    sft.steps = config.student.sft_steps
    student_params, info["student_sft"] = train_sft(models.student, student_params, oracle_data,
                                                     sft, seed, _key(seed, _STUDENT_SFT),
                                                     "student", partitioner)
  eval_key = _key(seed, _EVAL_SETS)
  sample_teacher_host = host_sampler(make_sampler(models.teacher, config, partitioner),
                                     partitioner)
  phase = progress.phase(workload.EVAL_SETS)
  eval_sets = {
      "oracle": regime_lib.build_offline(phase.counted(sample_oracle_host, "samples"),
                                         oracle_params, pools["eval"], 1,
                                         jax.random.fold_in(eval_key, 0)),
      "teacher": regime_lib.build_offline(phase.counted(sample_teacher_host, "samples"),
                                          teacher_params, pools["eval"], 1,
                                          jax.random.fold_in(eval_key, 1)),
  }
  # The teacher's own distance to the oracle: how imperfect the teacher is.
  teacher_vs_oracle = _evaluator(models, config, partitioner, models.teacher)
  for source, data in eval_sets.items():
    results = teacher_vs_oracle(teacher_params, teacher_params, oracle_params, data,
                                f"eval_{source}")
    for name, value in results.items():
      if "/golden/" in name:
        info[f"teacher/golden/{name.split('/')[-1]}@{source}_samples"] = value
  phase.finish()
  logging.info("Stage 1: teacher golden fkl %.3f (on oracle samples), %.1fs",
               info["teacher/golden/fkl@oracle_samples"], time.time() - start)

  os.makedirs(directory, exist_ok=True)
  for name, params in (("oracle", oracle_params), ("teacher", teacher_params),
                       ("student_init", student_params)):
    checkpoints.save_params(os.path.join(directory, name), params)  # collective

  def write_files():
    checkpoints.save_arrays(os.path.join(directory, "oracle_data.npz"), oracle_data)
    for name, data in eval_sets.items():
      checkpoints.save_arrays(os.path.join(directory, f"eval_{name}.npz"), data)
    info["seconds"] = time.time() - start
    checkpoints.write_json(marker, info)

  _write_on_main(write_files)
  return Stage1(oracle_params, teacher_params, student_params, eval_sets, info)


def offline_dataset(config: ml_collections.ConfigDict, workdir: str, models: Models,
                    stage1: Stage1, pools: dict[str, np.ndarray],
                    partitioner: Partitioner) -> dict[str, np.ndarray]:
  """The fixed N x k teacher-generated dataset, built once into `WORKDIR/offline_dataset.npz`."""
  path = os.path.join(workdir, "offline_dataset.npz")
  expected = fingerprint(config, STAGE1_SECTIONS + ("offline",))
  if os.path.exists(path):
    data = checkpoints.load_arrays(path)
    if str(data["fingerprint"]) == expected:
      return data
    raise resume.ConfigChanged(f"{path} was built by a different configuration; use a new "
                               "--workdir, or rerun with the values it was built with")
  phase = progress.phase(workload.OFFLINE_DATASET)
  data = regime_lib.build_offline(
      phase.counted(host_sampler(make_sampler(models.teacher, config, partitioner), partitioner),
                    "samples"),
      stage1.teacher_params, pools["distill"][:config.offline.num_prompts],
      config.offline.generations_per_prompt, _key(config.seed, _OFFLINE_DATA))
  phase.finish()
  data["fingerprint"] = np.asarray(expected)
  _write_on_main(lambda: checkpoints.save_arrays(path, data))
  return data


def regime_dir(workdir: str, regime: str) -> str:
  return os.path.join(workdir, regime)


class Preempted(RunError):
  """Raised by `run_regime` after SIGTERM: the run was checkpointed at `step` and can resume
  (exit status 75, EX_TEMPFAIL: schedulers retry it)."""
  exit_code = EX_TEMPFAIL

  def __init__(self, regime: str, step: int):
    super().__init__(f"{regime}: pre-empted (SIGTERM); checkpointed at step {step}. Run the same "
                     "command again to resume.")
    self.step = step


class _SigtermFlag:
  """Records SIGTERM instead of dying, while installed (`with _SigtermFlag() as flag`)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self) -> "_SigtermFlag":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM received: checkpointing after this step.")
    self.raised = True

  def any_process(self) -> bool:
    """Whether any process got SIGTERM (all processes must stop at the same step)."""
    if jax.process_count() == 1:
      return self.raised
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.raised))))

  def __exit__(self, *exc) -> None:
    signal.signal(signal.SIGTERM, self._previous)


def _write_marker(path: str, record: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  checkpoints.write_json(path, record)


def run_regime(config: ml_collections.ConfigDict, workdir: str, regime: str, models: Models,
               stage1: Stage1, pools: dict[str, np.ndarray], partitioner: Partitioner) -> None:
  """Distils the student under `regime`, logging to `WORKDIR/<regime>/` (resumable)."""
  directory = regime_dir(workdir, regime)
  marker = os.path.join(directory, "done.json")
  sections = tuple(k for k in config.keys() if k not in resume.FREE_FIELDS)
  expected, fields = fingerprint(config, sections), fingerprint_fields(config, sections)
  seed, student = config.seed, config.student
  eval_steps = set(evaluation_steps(student.steps, config.eval_every, config.eval_log_points))
  metrics_path = os.path.join(directory, "metrics.jsonl")
  if os.path.exists(marker):
    resume.check_marker(marker, expected, fields)
    last = checkpoints.read_json(marker)["steps"]
    guards.check_rows(metrics_path, {s for s in eval_steps if s <= last},
                      f"delete {directory} to run the regime again")
    logging.info("%s: already finished, reusing %s", regime, directory)
    return
  phase = progress.phase(workload.regime_key(regime), regime,
                         [progress.Work("steps", "distill", student.steps, 0)], lines=False)
  # An unfinished regime resumes under the config it started with only.
  started = os.path.join(directory, "started.json")
  if os.path.exists(started):
    resume.check_marker(started, expected, fields)
  else:
    _write_on_main(lambda: _write_marker(started, {"fingerprint": expected, "fields": fields}))
  # The frozen models, possibly in a narrower dtype for stage 2.
  teacher_params = partitioner.cast(models.teacher, stage1.teacher_params, config.frozen_dtype)
  oracle_params = partitioner.cast(models.oracle, stage1.oracle_params, config.frozen_dtype)
  sample_teacher = make_sampler(models.teacher, config, partitioner)
  sample_student = make_sampler(models.student, config, partitioner)
  num_train = config.eval.num_train_prompts
  if regime == "offline":
    data = offline_dataset(config, workdir, models, stage1, pools, partitioner)
    batch_at = regime_lib.offline_batches(data, student.batch_size, seed)
    # Training-prompt evaluation on the student's own training examples.
    train_set = {k: data[k][:num_train] for k in ("prompts", "responses", "mask")}
  else:
    prompts = online_prompts(config, pools)
    batch_at = regime_lib.online_batches(
        regime, prompts, student.batch_size, _key(seed, _ONLINE), sample_teacher,
        sample_student, teacher_params, config.mixture.student_fraction)
    train_set = regime_lib.build_offline(phase.counted(host_sampler(sample_teacher, partitioner),
                                                       "train-prompt samples"),
                                         teacher_params, prompts[:num_train], 1,
                                         _key(seed, _TRAIN_PROMPT_SET))
  fixed_sets = {"eval_oracle": stage1.eval_sets["oracle"],
                "eval_teacher": stage1.eval_sets["teacher"], "train_teacher": train_set}
  sample_student_host = host_sampler(sample_student, partitioner)
  evaluate_set = _evaluator(models, config, partitioner, models.student)

  optimizer = student_optimizer(config)
  # The checkpointed carry: the train state and the running sums of the train metrics since the
  # last logged row, so a resumed run logs exactly what an uninterrupted one would.
  state, _ = new_train_state(partitioner, models.student, stage1.student_init_params, optimizer)
  carry = {"state": state,
           "window": {name: jax.device_put(jnp.zeros((), jnp.float32), partitioner.replicated)
                      for name in DISTILL_METRICS + ("steps",)}}
  checkpointer = checkpoints.RunCheckpointer(os.path.join(directory, "checkpoints"))
  carry = checkpointer.restore_latest(carry) or carry
  start_step = int(carry["state"].step)
  for item, done in (("steps", start_step), ("generated batches", start_step),
                     ("evaluations", sum(s < start_step for s in eval_steps))):
    phase.skip(item, done)
  logging.info("%s: steps %d..%d", phase.title, start_step, student.steps)
  guards.check_rows(metrics_path, {s for s in eval_steps if s < start_step},
                    f"delete {directory} to run the regime again from step 0")
  writer = MetricsWriter(directory, resume_step=start_step, enabled=is_main_process())
  monitor = HackingMonitor.from_config(
      config.detection, directory, GOLDEN,
      history=[r for r in read_metrics(writer.path) if r["step"] < start_step])
  distill_step = distill_program(models, config, partitioner)
  frozen = (teacher_params, oracle_params)

  def evaluate(student_params: Any, step: int) -> dict[str, float]:
    student_samples = regime_lib.build_offline(
        sample_student_host, student_params, pools["eval"], 1,
        jax.random.fold_in(_key(seed, _EVAL_STUDENT), step))
    results = {}
    for name, data in {**fixed_sets, "eval_student": student_samples}.items():
      results.update(evaluate_set(student_params, *frozen, data, name))
    return results

  timers = {"generate": 0.0, "train": 0.0}
  watch = guards.StepWatch(regime, config.on_nonfinite)
  run_start = time.time()
  with _SigtermFlag() as sigterm:
    for step in range(start_step, student.steps + 1):
      # Checked before the evaluation, so a resumed run re-logs this step's row identically.
      if step > start_step and sigterm.any_process():
        checkpointer.save(step, carry)
        checkpointer.close()
        writer.close()
        raise Preempted(regime, step)
      state, window = carry["state"], carry["window"]
      if step in eval_steps:
        eval_start = time.time()
        row = evaluate(state.params, step)
        count = float(window["steps"])
        if count:
          row.update({k: float(v) / count for k, v in window.items()
                      if k not in ("steps", "train/tokens")})
          busy = timers["generate"] + timers["train"]
          row.update({"train/tokens": float(window["train/tokens"]),
                      "throughput/train_tokens_per_s": float(window["train/tokens"]) /
                      max(busy, 1e-9),
                      "time/generate_s": timers["generate"], "time/train_s": timers["train"],
                      "time/eval_s": time.time() - eval_start})
          window = jax.tree_util.tree_map(jnp.zeros_like, window)
          timers = {"generate": 0.0, "train": 0.0}
        row.update(monitor.observe(step, row, state.params))
        writer.write(step, row)
        phase.advance("evaluations")
        phase.log_line(f", golden {row['eval_oracle/golden/fkl']:.4f} proxy "
                       f"{row['eval_teacher/proxy/fkl']:.4f}")
      if step == student.steps or monitor.should_stop:
        break
      tic = time.time()
      batch = partitioner.shard_batch(jax.block_until_ready(batch_at(step, state.params)))
      toc = time.time()
      if regime != "offline":
        phase.advance("generated batches")
      state, metrics = distill_step(state, *frozen, batch,
                                    jax.random.fold_in(_key(seed, _TRAIN_DROPOUT), step))
      if watch.counts(step, metrics, checkpointer):  # False: a skipped non-finite step
        window = {k: v + (1.0 if k == "steps" else metrics[k]) for k, v in window.items()}
      carry = jax.block_until_ready({"state": state, "window": window})
      phase.advance("steps")
      timers["generate"] += toc - tic
      timers["train"] += time.time() - toc
      if (step + 1) % config.checkpoint_every == 0:
        checkpointer.save(step + 1, carry)
  checkpointer.save(step, carry)
  checkpointer.close()
  writer.close()
  phase.finish()
  if monitor.should_stop:
    logging.warning("%s: stopped at step %d by the hacking detector (detection.on_detect = "
                    "'stop').", regime, step)
  _write_on_main(lambda: checkpoints.write_json(marker, {
      "fingerprint": expected, "steps": step, "stopped_by_detector": monitor.should_stop,
      "seconds": time.time() - run_start}))
