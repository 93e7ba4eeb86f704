"""The run's compiled programs: every function that runs on the mesh.

The builders return `Partitioner.jit` results (call them, or `.lower` them for abstract
arguments as `th_distill.planning.plan` does) of module-level functions whose models and settings are
static arguments: JAX's own cache reuses a compiled program wherever the same function, settings,
mesh and shapes meet again (the runs of a study, of a test session) and compiles afresh on any
difference. `Programs` gives a run's stages their programs and wraps the samplers and the
evaluator for host data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from th_distill import sampling
from th_distill.config.run_config import RunConfig
from th_distill.config.settings import (
  DistillSettings,
  OptimizerSettings,
  SamplingSettings,
)
from th_distill.data.batch import Batch, TeacherTopK
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import Partitioner, pad_rows
from th_distill.sampling import SampleFn
from th_distill.training import guards
from th_distill.training.steps import (
  TrainState,
  create_train_state,
  make_distill_step,
  make_eval_sums,
  make_sft_step,
  reduce_eval_sums,
  teacher_top_k,
)

# evaluate(student_params, teacher_params, oracle_params, data, prefix) -> {prefix/name: value}
Evaluator = Callable[[Any, Any, Any, dict[str, np.ndarray], str], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Models:
  """The run's three models (`LanguageModel`s), built from `<name>.model` of the config."""

  oracle: LanguageModel
  teacher: LanguageModel
  student: LanguageModel

  @classmethod
  def from_config(cls, config: RunConfig) -> Models:
    return cls(*(config.model(name).module() for name in ("oracle", "teacher", "student")))


def batch_shardings(partitioner: Partitioner) -> jax.sharding.NamedSharding:
  """A batch's shardings (a prefix of every `Batch`): every array split along its rows."""
  return partitioner.batch_sharding(1)


def _sample(
  params: Any, prompts: jax.Array, keys: jax.Array, model: LanguageModel, settings: SamplingSettings
) -> sampling.SampleOutput:
  return sampling.generate(model, params, prompts, keys, **dataclasses.asdict(settings))


def sampler_program(
  model: LanguageModel, settings: SamplingSettings, partitioner: Partitioner
) -> Callable:
  """`(params, prompts [B, Li] int32, keys [B, 2] uint32) -> SampleOutput` of [B, Lt]: `model`
  sampling with `settings`, inputs and outputs split along B."""
  rows = partitioner.batch_sharding(2)
  return partitioner.jit(
    _sample,
    in_shardings=(partitioner.param_shardings(model), rows, rows),
    out_shardings=sampling.SampleOutput(rows, rows, rows),
    static=(model, settings),
  )


def _sft_step(
  state: TrainState, batch: Batch, rng: jax.Array, model: LanguageModel, on_nonfinite: str
) -> tuple:
  step = guards.skip_nonfinite(make_sft_step(model), on_nonfinite, "sft/loss", "sft/grad_norm")
  return step(state, batch, rng)


def sft_program(
  model: LanguageModel,
  optimizer: optax.GradientTransformation,
  partitioner: Partitioner,
  on_nonfinite: str = "stop",
) -> Callable:
  """The SFT step `(state, batch, rng) -> (state, metrics)` (the state donated); with
  `on_nonfinite = 'skip'` a non-finite step keeps the state (`guards.skip_nonfinite`)."""
  state_shardings = partitioner.state_shardings(model, optimizer)
  return partitioner.jit(
    _sft_step,
    in_shardings=(state_shardings, batch_shardings(partitioner), partitioner.replicated),
    out_shardings=(state_shardings, partitioner.replicated),
    donate_argnums=0,
    static=(model, on_nonfinite),
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


def eval_program(
  models: Models, student: LanguageModel, sequence_chunks: int, partitioner: Partitioner
) -> Callable:
  """`(student_params, teacher_params, oracle_params, batch) -> {name: sum}`: `train.eval_sums`
  of `student` against the teacher and the oracle."""
  return partitioner.jit(
    _eval_sums,
    in_shardings=(
      partitioner.param_shardings(student),
      partitioner.param_shardings(models.teacher),
      partitioner.param_shardings(models.oracle),
      batch_shardings(partitioner),
    ),
    out_shardings=partitioner.replicated,
    static=(models, student, sequence_chunks),
  )


def _distill_step(
  state: TrainState,
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  rng: jax.Array,
  models: Models,
  settings: DistillSettings,
) -> tuple:
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
  return guards.skip_nonfinite(step, settings.on_nonfinite)(
    state, teacher_params, oracle_params, batch, rng
  )


def distill_program(
  models: Models, settings: DistillSettings, partitioner: Partitioner
) -> Callable:
  """The distillation step `(state, teacher_params, oracle_params, batch, rng) -> (state,
  metrics)` of `settings` (the state donated)."""
  state_shardings = partitioner.state_shardings(models.student, settings.optimizer.build())
  return partitioner.jit(
    _distill_step,
    in_shardings=(
      state_shardings,
      partitioner.param_shardings(models.teacher),
      partitioner.param_shardings(models.oracle),
      batch_shardings(partitioner),
      partitioner.replicated,
    ),
    out_shardings=(state_shardings, partitioner.replicated),
    donate_argnums=0,
    static=(models, settings),
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
    out_shardings=partitioner.state_shardings(model, optimizer),
    static=(optimizer,),
  )
  return create(params)


class Programs:
  """The compiled programs of one run, each built on first use and reused by every stage."""

  def __init__(self, models: Models, config: RunConfig, partitioner: Partitioner):
    self.models, self.config, self.partitioner = models, config, partitioner
    self._built: dict[tuple, Any] = {}

  def _once(self, key: tuple, build: Callable[[], Any]) -> Any:
    if key not in self._built:
      self._built[key] = build()
    return self._built[key]

  def sampler(self, name: str) -> SampleFn:
    """`fn(params, prompts [B, Li], rng) -> (tokens [B, Lt] int32, mask [B, Lt] float32)` of
    model `name` ('oracle', 'teacher' or 'student'). Prompts may be host arrays; B must split
    over the data-parallel devices. Outputs are global device arrays split along B."""
    partitioner = self.partitioner
    compiled = self._once(
      ("sampler", name),
      lambda: sampler_program(
        getattr(self.models, name), self.config.sampling_settings, partitioner
      ),
    )

    def fn(params, prompts, rng):
      prompts = partitioner.shard_batch(prompts)
      keys = partitioner.shard_batch(np.asarray(sampling.example_keys(rng, prompts.shape[0])))
      out = compiled(params, prompts, keys)
      return out.tokens, out.mask

    return fn

  def host_sampler(self, name: str) -> SampleFn:
    """`sampler(name)` for any number of host prompts, with numpy results on every process:
    rows are padded to the data-parallel size (padding rows never change the real rows'
    samples: each row has its own key), the outputs gathered and trimmed."""
    sample, partitioner = self.sampler(name), self.partitioner

    def fn(params, prompts, rng):
      padded, rows = pad_rows({"prompts": np.asarray(prompts)}, partitioner.data_parallel_size)
      tokens, mask = sample(params, padded["prompts"], rng)
      return partitioner.to_host(tokens)[:rows], partitioner.to_host(mask)[:rows]

    return fn

  def sft_step(
    self, name: str, settings: OptimizerSettings, on_nonfinite: str = "stop"
  ) -> Callable:
    """The SFT step of model `name` under `settings`' optimiser (`on_nonfinite`: `sft_program`)."""
    return self._once(
      ("sft", name, settings, on_nonfinite),
      lambda: sft_program(
        getattr(self.models, name), settings.build(), self.partitioner, on_nonfinite
      ),
    )

  def distill_step(self) -> Callable:
    """The distillation step of the run's settings."""
    return self._once(
      ("distill",), lambda: distill_program(self.models, self.config.distill, self.partitioner)
    )

  def evaluator(self, name: str) -> Evaluator:
    """`evaluate(student_params, teacher_params, oracle_params, data, prefix)`: per-token and
    per-sequence proxy/golden divergences of model `name` (as the student) on the host dataset
    `data` (prompts, responses, mask), `eval.batch_size` rows at a time padded to the
    data-parallel size."""
    partitioner, size = self.partitioner, self.config.eval.batch_size
    eval_sums = self._once(
      ("eval", name),
      lambda: eval_program(
        self.models, getattr(self.models, name), self.config.sequence_chunks, partitioner
      ),
    )

    def evaluate(student_params, teacher_params, oracle_params, data, prefix):
      totals: dict[str, float] = {}
      for start in range(0, len(data["prompts"]), size):
        chunk, _ = pad_rows(
          {k: data[k][start : start + size] for k in ("prompts", "responses", "mask")},
          partitioner.data_parallel_size,
        )
        sums = eval_sums(
          student_params, teacher_params, oracle_params, partitioner.shard_batch(Batch(**chunk))
        )
        for key, value in sums.items():
          totals[key] = totals.get(key, 0.0) + float(value)
      return reduce_eval_sums(totals, prefix)

    return evaluate

  def teacher_top(self) -> Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """`fn(teacher_params, data) -> {top_values, top_indices, top_tail}`: the teacher's top
    `loss.teacher_top_k` log-probabilities at `loss.temperature` on the host dataset `data`
    (prompts, responses, mask: [N, ...]), as host arrays [N, Lt, K] (the indices in the
    smallest unsigned type that holds the vocabulary) and [N, Lt], `eval.batch_size` rows at a
    time."""
    loss, partitioner, size = self.config.loss, self.partitioner, self.config.eval.batch_size
    compiled = self._once(
      ("teacher_top",),
      lambda: teacher_top_program(
        self.models.teacher, loss.teacher_top_k, loss.temperature, partitioner
      ),
    )
    index_dtype = np.min_scalar_type(self.config.task.vocab_size - 1)

    def fn(teacher_params, data):
      parts = []
      for start in range(0, len(data["prompts"]), size):
        chunk, rows = pad_rows(
          {k: data[k][start : start + size] for k in ("prompts", "responses", "mask")},
          partitioner.data_parallel_size,
        )
        top = compiled(teacher_params, partitioner.shard_batch(Batch(**chunk)))
        parts.append([partitioner.to_host(x)[:rows] for x in (top.values, top.indices, top.tail)])
      values, indices, tail = (np.concatenate(column) for column in zip(*parts))
      return {"top_values": values, "top_indices": indices.astype(index_dtype), "top_tail": tail}

    return fn

  def frozen(self, name: str, params: Any) -> Any:
    """Model `name`'s `params` in stage 2's `frozen_dtype`, in their shards."""
    return self.partitioner.cast(getattr(self.models, name), params, self.config.frozen_dtype)
