"""The builders of a run's compiled programs: each returns a `Partitioner.jit` result (call it,
or `.lower` it for abstract arguments as `th_distill.planning.plan` does) of a module-level
function whose models and settings are static arguments, so JAX's own cache reuses a compiled
program wherever the same function, settings, mesh and shapes meet again (the runs of a study,
of a test session) and compiles afresh on any difference. `Models`: the run's three models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from th_distill import sampling
from th_distill.config.run_config import RunConfig
from th_distill.config.settings import (
  DistillSettings,
  SamplingSettings,
)
from th_distill.data.batch import Batch, TeacherTopK
from th_distill.models import module_of
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import Partitioner
from th_distill.training import dispatch, guards
from th_distill.training.eval_steps import eval_sums_against, make_eval_sums, reference_logits
from th_distill.training.steps import (
  TrainState,
  create_train_state,
  make_distill_step,
  make_sft_step,
  state_shardings,
  teacher_top_k,
)


@dataclasses.dataclass(frozen=True)
class Models:
  """The run's three models (`LanguageModel`s), built from `<name>.model` of the config."""

  oracle: LanguageModel
  teacher: LanguageModel
  student: LanguageModel

  @classmethod
  def from_config(cls, config: RunConfig) -> Models:
    return cls(*(module_of(config.model(name)) for name in ("oracle", "teacher", "student")))


def batch_shardings(partitioner: Partitioner) -> jax.sharding.NamedSharding:
  """A batch's shardings (a prefix of every `Batch`): every array split along its rows."""
  return partitioner.batch_sharding(1)


def _sample(
  params: Any,
  prompts: jax.Array,
  prompt_mask: jax.Array,
  keys: jax.Array,
  model: LanguageModel,
  settings: SamplingSettings,
) -> sampling.SampleOutput:
  return sampling.generate(model, params, prompts, prompt_mask, keys, **settings.arguments())


def sampler_program(
  model: LanguageModel, settings: SamplingSettings, partitioner: Partitioner
) -> Callable:
  """`(params, prompts [B, Li] int32, prompt_mask [B, Li] bool, keys [B, 2] uint32) ->
  SampleOutput` of [B, Lt]: `model` sampling with `settings`, inputs and outputs split along B."""
  rows = partitioner.batch_sharding(2)
  return partitioner.jit(
    _sample,
    in_shardings=(partitioner.param_shardings(model), rows, rows, rows),
    out_shardings=sampling.SampleOutput(rows, rows, rows),
    static=(model, settings),
  )


def _sft_step_fn(model: LanguageModel, on_nonfinite: str) -> Callable:
  return guards.skip_nonfinite(make_sft_step(model), on_nonfinite, "sft/loss", "sft/grad_norm")


def _sft_step(
  state: TrainState, batch: Batch, rng: jax.Array, model: LanguageModel, on_nonfinite: str
) -> tuple:
  return _sft_step_fn(model, on_nonfinite)(state, batch, rng)


def _sft_steps(
  state: TrainState,
  batches: Batch,
  rng: jax.Array,
  first: jax.Array,
  count: jax.Array,
  model: LanguageModel,
  on_nonfinite: str,
) -> tuple:
  step = _sft_step_fn(model, on_nonfinite)
  return dispatch.repeat_steps(step, state, (), batches, rng, first, count)


def _step_program(
  single: Callable,
  repeated: Callable,
  dispatched: bool,
  state_shardings: Any,
  frozen_shardings: tuple,
  static: tuple,
  partitioner: Partitioner,
) -> Callable:
  """`single(state, *frozen, batch, rng)` or, `dispatched`, `repeated(state, *frozen, batches
  [K, B, ...], rng, first, count)` (`dispatch.repeat_steps`) compiled for the mesh, the state
  donated and the metrics replicated (stacked [K] when dispatched)."""
  rep = partitioner.replicated
  if dispatched:
    fn, data = repeated, (partitioner.batch_sharding(2, axis=1), rep, rep, rep)
  else:
    fn, data = single, (batch_shardings(partitioner), rep)
  return partitioner.jit(
    fn,
    in_shardings=(state_shardings, *frozen_shardings, *data),
    out_shardings=(state_shardings, rep),
    donate_argnums=0,
    static=static,
  )


def sft_program(
  model: LanguageModel,
  optimizer: optax.GradientTransformation,
  partitioner: Partitioner,
  on_nonfinite: str = "stop",
  dispatched: bool = False,
) -> Callable:
  """The SFT step `(state, batch, rng) -> (state, metrics)` (the state donated); with
  `on_nonfinite = 'skip'` a non-finite step keeps the state (`guards.skip_nonfinite`).
  `dispatched`: several steps per call, `(state, batches, rng, first, count) -> (state,
  metrics [K])` (`dispatch.repeat_steps`)."""
  return _step_program(
    _sft_step,
    _sft_steps,
    dispatched,
    state_shardings(partitioner, model, optimizer),
    (),
    (model, on_nonfinite),
    partitioner,
  )


def _eval_sums(
  student_params: Any,
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  models: Models,
  student: LanguageModel,
  sequence_chunks: int,
) -> dict[str, jax.Array]:
  return make_eval_sums(student, models.teacher, models.oracle, sequence_chunks)(
    student_params, teacher_params, oracle_params, batch
  )


def _param_shardings(partitioner: Partitioner, model: LanguageModel | None) -> Any:
  """The shardings of `model`'s parameters; None (nothing to place) for no model."""
  return None if model is None else partitioner.param_shardings(model)


def eval_program(
  models: Models, student: LanguageModel, sequence_chunks: int, partitioner: Partitioner
) -> Callable:
  """`(student_params, teacher_params, oracle_params, batch) -> {name: sum}`: `eval_steps.eval_sums`
  of `student` against the teacher and the oracle (the teacher alone when `models.oracle` is
  None: then `oracle_params` is None)."""
  return partitioner.jit(
    _eval_sums,
    in_shardings=(
      partitioner.param_shardings(student),
      partitioner.param_shardings(models.teacher),
      _param_shardings(partitioner, models.oracle),
      batch_shardings(partitioner),
    ),
    out_shardings=partitioner.replicated,
    static=(models, student, sequence_chunks),
  )


def _reference_logits(
  teacher_params: Any, oracle_params: Any, batch: Batch, models: Models
) -> dict[str, jax.Array]:
  return reference_logits(
    teacher_params, oracle_params, batch, teacher=models.teacher, oracle=models.oracle
  )


def reference_program(models: Models, partitioner: Partitioner) -> Callable:
  """`(teacher_params, oracle_params, batch) -> {'proxy', 'golden'}: logits [B, Lt, V]` (split
  along B): the references' side of `eval_program`, for a set evaluated many times."""
  return partitioner.jit(
    _reference_logits,
    in_shardings=(
      partitioner.param_shardings(models.teacher),
      partitioner.param_shardings(models.oracle),
      batch_shardings(partitioner),
    ),
    out_shardings=batch_shardings(partitioner),
    static=(models,),
  )


def _eval_sums_against(
  student_params: Any, batch: Batch, refs: dict[str, jax.Array], student: LanguageModel
) -> dict[str, jax.Array]:
  return eval_sums_against(student_params, batch, refs, student=student)


def eval_against_program(student: LanguageModel, partitioner: Partitioner) -> Callable:
  """`(student_params, batch, refs) -> {name: sum}`: `eval_program`'s sums against the
  references' logits `refs` computed beforehand (`reference_program`)."""
  return partitioner.jit(
    _eval_sums_against,
    in_shardings=(
      partitioner.param_shardings(student),
      batch_shardings(partitioner),
      batch_shardings(partitioner),
    ),
    out_shardings=partitioner.replicated,
    static=(student,),
  )


def _distill_step_fn(models: Models, settings: DistillSettings) -> Callable:
  loss = settings.loss
  step = make_distill_step(
    models.student,
    models.teacher,
    models.oracle,
    loss=loss.name,
    beta=loss.beta,
    normalized=loss.normalized,
    temperature=loss.temperature,
    micro_batches=settings.micro_batches,
    sequence_chunks=settings.sequence_chunks,
    teacher_top_k=loss.teacher_top_k,
    tail=loss.tail,
  )
  return guards.skip_nonfinite(step, settings.on_nonfinite)


def _distill_step(
  state: TrainState,
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  rng: jax.Array,
  models: Models,
  settings: DistillSettings,
) -> tuple:
  return _distill_step_fn(models, settings)(state, teacher_params, oracle_params, batch, rng)


def _distill_steps(
  state: TrainState,
  teacher_params: Any,
  oracle_params: Any,
  batches: Batch,
  rng: jax.Array,
  first: jax.Array,
  count: jax.Array,
  models: Models,
  settings: DistillSettings,
) -> tuple:
  step = _distill_step_fn(models, settings)
  frozen = (teacher_params, oracle_params)
  return dispatch.repeat_steps(step, state, frozen, batches, rng, first, count)


def distill_program(
  models: Models,
  settings: DistillSettings,
  partitioner: Partitioner,
  dispatched: bool = False,
  optimizer: optax.GradientTransformation | None = None,
) -> Callable:
  """The distillation step `(state, teacher_params, oracle_params, batch, rng) -> (state,
  metrics)` of `settings` (the state donated); `dispatched`: several steps per call,
  `(state, teacher_params, oracle_params, batches, rng, first, count) -> (state, metrics
  [K])` (`dispatch.repeat_steps`). `optimizer`: the student's (default
  `settings.optimizer.build()`); with `models.oracle` None, `oracle_params` is None and the
  golden metrics are left out."""
  optimizer = optimizer if optimizer is not None else settings.optimizer.build()
  return _step_program(
    _distill_step,
    _distill_steps,
    dispatched,
    state_shardings(partitioner, models.student, optimizer),
    (partitioner.param_shardings(models.teacher), _param_shardings(partitioner, models.oracle)),
    (models, settings),
    partitioner,
  )


def _teacher_top(
  teacher_params: Any, batch: Batch, teacher: LanguageModel, k: int, temperature: float
) -> TeacherTopK:
  return teacher_top_k(teacher_params, batch, teacher=teacher, k=k, temperature=temperature)


def teacher_top_program(
  teacher: LanguageModel, k: int, temperature: float, partitioner: Partitioner
) -> Callable:
  """`(teacher_params, batch) -> TeacherTopK` ([B, Lt, K] arrays, split along B): the
  teacher's top `k` log-probabilities at `temperature` on the batch's responses."""
  return partitioner.jit(
    _teacher_top,
    in_shardings=(partitioner.param_shardings(teacher), batch_shardings(partitioner)),
    out_shardings=batch_shardings(partitioner),
    static=(teacher, k, temperature),
  )


def _create_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return create_train_state(params, optimizer)


def new_train_state(
  partitioner: Partitioner,
  model: LanguageModel,
  params: Any,
  optimizer: optax.GradientTransformation,
) -> TrainState:
  """A fresh train state of `model` on a copy of `params`, sharded by the logical rules."""
  create = partitioner.jit(
    _create_state,
    in_shardings=(partitioner.param_shardings(model),),
    out_shardings=state_shardings(partitioner, model, optimizer),
    static=(optimizer,),
  )
  return create(params)
