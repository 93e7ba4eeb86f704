"""Every program a run compiles (`PROGRAMS`), with abstract arguments that carry the run's
shardings and dtypes: what `th_distill.planning.plan` lowers and compiles ahead of time, shapes
only (no parameter, batch or dataset is allocated, no file is read)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from th_distill.config.run_config import RunConfig
from th_distill.data.regimes import SAMPLE_CHUNK
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import Partitioner
from th_distill.planning import flops
from th_distill.training import program_builders as program_lib
from th_distill.training.program_builders import Models
from th_distill.training.programs import MemoryLayout
from th_distill.training.steps import Batch, create_train_state, state_shardings

PROGRAMS = ("oracle_sampling", "teacher_sft_step", "distill_step", "online_sampler", "evaluator")

# A program's entry: (program, abstract arguments, rows, th_distill.planning.flops of one call).
Entry = tuple[Callable, tuple, int, float]


def _rows(rows: int, partitioner: Partitioner) -> int:
  """`rows` padded to a multiple of the data-parallel size, as the run pads its chunks."""
  return -(-rows // partitioner.data_parallel_size) * partitioner.data_parallel_size


def _abstract_rows(
  partitioner: Partitioner, n: int, length: int, dtype: Any
) -> jax.ShapeDtypeStruct:
  """An abstract [n, length] array of `dtype`, its rows split as the run splits a batch."""
  return jax.ShapeDtypeStruct((n, length), dtype, sharding=partitioner.batch_sharding(2))


def _abstract_batch(partitioner: Partitioner, n: int, li: int, lt: int) -> Batch:
  """An abstract `Batch` of `n` rows: prompts and their mask [n, li], responses and mask [n, lt]."""
  return Batch(
    _abstract_rows(partitioner, n, li, jnp.int32),
    _abstract_rows(partitioner, n, li, jnp.bool_),
    _abstract_rows(partitioner, n, lt, jnp.int32),
    _abstract_rows(partitioner, n, lt, jnp.float32),
  )


def _abstract_state(partitioner: Partitioner, model: LanguageModel, optimizer: Any) -> Any:
  """The abstract train state of `model` under `optimizer`, with the run's shardings."""
  shapes = jax.eval_shape(
    lambda p: create_train_state(p, optimizer), partitioner.abstract_params(model)
  )
  return jax.tree_util.tree_map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    shapes,
    state_shardings(partitioner, model, optimizer),
  )


def _abstract_sampler(
  config: RunConfig, partitioner: Partitioner, model: LanguageModel, dtype: str, n: int
) -> tuple[Callable, tuple, int]:
  """(the sampler of `model`, its abstract arguments for `n` prompts, `n`): parameters in
  `dtype`, prompts and their mask [n, Li], raw keys [n, 2]."""
  li = config.task.prompt_length
  return (
    program_lib.sampler_program(model, config.sampling_settings, partitioner),
    (
      partitioner.abstract_params(model, dtype),
      _abstract_rows(partitioner, n, li, jnp.int32),
      _abstract_rows(partitioner, n, li, jnp.bool_),
      _abstract_rows(partitioner, n, 2, jnp.uint32),
    ),
    n,
  )


def _call_rows(
  config: RunConfig, partitioner: Partitioner, layout: MemoryLayout
) -> tuple[int, int]:
  """The rows of one call of the oracle's sampler and of the evaluator, padded as the run pads."""
  n_sample = _rows(
    min(SAMPLE_CHUNK, config.prompts.num_oracle, layout.sample_rows or SAMPLE_CHUNK), partitioner
  )
  n_eval = _rows(
    min(layout.eval_rows, config.eval.batch_size, config.prompts.num_eval), partitioner
  )
  return n_sample, n_eval


def _sampling_programs(
  config: RunConfig, partitioner: Partitioner, models: Models, layout: MemoryLayout
) -> dict[str, Entry]:
  """The oracle's sampler (float32, the calls of `layout`) and the online teacher sampler (in
  `frozen_dtype`, a student batch of prompts)."""
  li, lt = config.task.prompt_length, config.task.response_length
  n_sample, _ = _call_rows(config, partitioner, layout)
  n_student = config.student.batch_size
  return {
    "oracle_sampling": (
      *_abstract_sampler(config, partitioner, models.oracle, "float32", n_sample),
      n_sample * flops.generation_flops(models.oracle.cfg, li, lt),
    ),
    "online_sampler": (
      *_abstract_sampler(config, partitioner, models.teacher, config.frozen_dtype, n_student),
      n_student * flops.generation_flops(models.teacher.cfg, li, lt),
    ),
  }


def _training_programs(
  config: RunConfig, partitioner: Partitioner, models: Models, layout: MemoryLayout
) -> dict[str, Entry]:
  """The teacher's SFT step, the student's distillation step and the evaluator (the calls of
  `layout`), the teacher and the oracle held in `frozen_dtype`."""
  li, lt = config.task.prompt_length, config.task.response_length
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioner.replicated)
  teacher, oracle = (
    partitioner.abstract_params(m, config.frozen_dtype) for m in (models.teacher, models.oracle)
  )
  teacher_optimizer, distill = config.teacher.sft.build(), config.distill
  _, n_eval = _call_rows(config, partitioner, layout)
  n_teacher, n_student = config.teacher.batch_size, config.student.batch_size
  cfg = {name: getattr(models, name).cfg for name in ("oracle", "teacher", "student")}
  return {
    "teacher_sft_step": (
      program_lib.sft_program(models.teacher, teacher_optimizer, partitioner),
      (
        _abstract_state(partitioner, models.teacher, teacher_optimizer),
        _abstract_batch(partitioner, n_teacher, li, lt),
        key,
      ),
      n_teacher,
      n_teacher * flops.train_flops(cfg["teacher"], li, lt),
    ),
    "distill_step": (
      program_lib.distill_program(models, distill, partitioner),
      (
        _abstract_state(partitioner, models.student, distill.optimizer.build()),
        teacher,
        oracle,
        _abstract_batch(partitioner, n_student, li, lt),
        key,
      ),
      n_student,
      n_student * flops.distill_flops(cfg["student"], cfg["teacher"], li, lt, oracle=cfg["oracle"]),
    ),
    "evaluator": (
      program_lib.eval_program(models, models.student, layout.eval_chunks, partitioner),
      (
        partitioner.abstract_params(models.student),
        teacher,
        oracle,
        _abstract_batch(partitioner, n_eval, li, lt),
      ),
      n_eval,
      n_eval * sum(flops.forward_flops(c, li, lt) for c in cfg.values()),
    ),
  }


def abstract_programs(
  config: RunConfig, partitioner: Partitioner, layout: MemoryLayout | None = None
) -> dict[str, Entry]:
  """{name: (program, abstract arguments, rows, th_distill.planning.flops of the whole program)}
  for each of `PROGRAMS`, in that order, the arguments being `jax.ShapeDtypeStruct`s with the
  run's shardings and dtypes (stage 2 holds the teacher and oracle in `frozen_dtype`); the
  oracle's sampler and the evaluator take the calls of `layout` (default: the config's,
  `MemoryLayout.of_config`)."""
  layout = layout or MemoryLayout.of_config(config)
  models = Models.from_config(config)
  built = {
    **_sampling_programs(config, partitioner, models, layout),
    **_training_programs(config, partitioner, models, layout),
  }
  return {name: built[name] for name in PROGRAMS}
