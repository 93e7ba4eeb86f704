"""The run's compiled programs: every function that runs on the mesh.

The builders return `Partitioner.jit` results (call them, or `.lower` them for abstract
arguments as `th_distill.planning.plan` does) of module-level functions whose models and settings are
static arguments: JAX's own cache reuses a compiled program wherever the same function, settings,
mesh and shapes meet again (the runs of a study, of a test session) and compiles afresh on any
difference. `Programs` gives a run's stages their programs and wraps the samplers and the
evaluator for host data, split into device calls as its `MemoryLayout` says.
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
from th_distill.data.batch import BATCH_ARRAYS, Batch, TeacherTopK
from th_distill.models import module_of
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import Partitioner, pad_rows
from th_distill.sampling import SampleFn
from th_distill.training import dispatch, guards
from th_distill.training.steps import (
  TrainState,
  create_train_state,
  eval_sums_against,
  make_distill_step,
  make_eval_sums,
  make_sft_step,
  reduce_eval_sums,
  reference_logits,
  state_shardings,
  teacher_top_k,
)

# The most bytes of reference logits per device a fixed evaluation set keeps on the devices
# (`Programs.set_evaluator`) unless the layout allows fewer; a larger set recomputes them at
# every evaluation.
REFERENCE_CACHE_BYTES = 1 << 28


@dataclasses.dataclass(frozen=True)
class MemoryLayout:
  """How `Programs` splits host data into device calls so that each call fits a device (chosen
  for the device's memory by `th_distill.planning.memory.memory_layout`; `of_config`: as the
  config says, nothing split further).

  `sample_rows`: the most rows of one sampler call of `Programs.host_sampler` (None: a call's
  rows at once); `eval_rows`: rows per evaluator call; `eval_chunks`: chunks of the response
  positions inside an evaluator call (it divides Lt); `reference_bytes`: the most bytes per
  device of reference logits a fixed evaluation set keeps on the devices (`set_evaluator`).
  Row counts are multiples of the data-parallel size. Each row keeps its own sampling key and
  the evaluator's sums are added over rows and positions, so a layout changes no sample and no
  metric beyond float rounding."""

  sample_rows: int | None
  eval_rows: int
  eval_chunks: int
  reference_bytes: int = REFERENCE_CACHE_BYTES

  @classmethod
  def of_config(cls, config: RunConfig) -> MemoryLayout:
    """The config's own split: `eval.batch_size` rows in `sequence_chunks` chunks."""
    return cls(None, config.eval.batch_size, config.sequence_chunks)


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
  """`(student_params, teacher_params, oracle_params, batch) -> {name: sum}`: `train.eval_sums`
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


def _reduce(parts: list[dict[str, jax.Array]], prefix: str) -> dict[str, float]:
  """The chunks' eval sums added in order on the host, then `reduce_eval_sums`."""
  totals: dict[str, float] = {}
  for sums in parts:
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return reduce_eval_sums(totals, prefix)


class Programs:
  """The compiled programs of one run, each built on first use and reused by every stage."""

  def __init__(
    self,
    models: Models,
    config: RunConfig,
    partitioner: Partitioner,
    layout: MemoryLayout | None = None,
  ):
    self.models, self.config, self.partitioner = models, config, partitioner
    self.layout = layout or MemoryLayout.of_config(config)
    self._built: dict[tuple, Any] = {}

  def _once(self, key: tuple, build: Callable[[], Any]) -> Any:
    if key not in self._built:
      self._built[key] = build()
    return self._built[key]

  def sampler(self, name: str) -> SampleFn:
    """`fn(params, prompts [B, Li], prompt_mask [B, Li], rng) -> (tokens [B, Lt] int32, mask
    [B, Lt] float32)` of model `name` ('oracle', 'teacher' or 'student'). Prompts may be host
    arrays; B must split over the data-parallel devices. Outputs are global device arrays split
    along B."""
    partitioner = self.partitioner
    compiled = self._once(
      ("sampler", name),
      lambda: sampler_program(
        getattr(self.models, name), self.config.sampling_settings, partitioner
      ),
    )

    def fn(params, prompts, prompt_mask, rng):
      prompts, prompt_mask = partitioner.shard_batch((prompts, prompt_mask))
      keys = partitioner.shard_batch(np.asarray(sampling.example_keys(rng, prompts.shape[0])))
      out = compiled(params, prompts, prompt_mask, keys)
      return out.tokens, out.mask

    return fn

  def host_sampler(self, name: str) -> SampleFn:
    """`sampler(name)` for any number of host prompts, with numpy results on every process:
    rows are padded to the data-parallel size (padding rows never change the real rows'
    samples: each row has its own key), the outputs gathered and trimmed. More rows than the
    layout's `sample_rows` are sampled that many at a time, each row with the key it has in one
    call (`sampling.example_keys` of the call's rows)."""
    sample, partitioner, most = self.sampler(name), self.partitioner, self.layout.sample_rows

    def one_call(params, arrays, rng):
      padded, rows = pad_rows(arrays, partitioner.data_parallel_size)
      keys = padded.get("keys", rng)
      tokens, mask = sample(params, padded["prompts"], padded["prompt_mask"], keys)
      return partitioner.to_host(tokens)[:rows], partitioner.to_host(mask)[:rows]

    def fn(params, prompts, prompt_mask, rng):
      arrays = {"prompts": np.asarray(prompts), "prompt_mask": np.asarray(prompt_mask)}
      rows = len(arrays["prompts"])
      if most is None or rows <= most:
        return one_call(params, arrays, rng)
      arrays["keys"] = np.asarray(sampling.example_keys(rng, rows))
      parts = [
        one_call(params, {k: v[i : i + most] for k, v in arrays.items()}, None)
        for i in range(0, rows, most)
      ]
      return tuple(np.concatenate(column) for column in zip(*parts))

    return fn

  def sft_step(
    self,
    name: str,
    settings: OptimizerSettings,
    on_nonfinite: str = "stop",
    dispatched: bool = False,
  ) -> Callable:
    """The SFT step of model `name` under `settings`' optimiser (`on_nonfinite`, `dispatched`:
    `sft_program`)."""
    return self._once(
      ("sft", name, settings, on_nonfinite, dispatched),
      lambda: sft_program(
        getattr(self.models, name), settings.build(), self.partitioner, on_nonfinite, dispatched
      ),
    )

  def distill_step(self, dispatched: bool = False) -> Callable:
    """The distillation step of the run's settings (`dispatched`: `distill_program`)."""
    return self._once(
      ("distill", dispatched),
      lambda: distill_program(self.models, self.config.distill, self.partitioner, dispatched),
    )

  def evaluator(self, name: str) -> Evaluator:
    """`evaluate(student_params, teacher_params, oracle_params, data, prefix)`: per-token and
    per-sequence proxy/golden divergences of model `name` (as the student) on the host dataset
    `data` (prompts, prompt_mask, responses, mask), the layout's `eval_rows` rows at a time
    padded to the data-parallel size, in `eval_chunks` chunks of positions each."""
    eval_sums = self._once(
      ("eval", name),
      lambda: eval_program(
        self.models, getattr(self.models, name), self.layout.eval_chunks, self.partitioner
      ),
    )

    def evaluate(student_params, teacher_params, oracle_params, data, prefix):
      parts = [
        eval_sums(student_params, teacher_params, oracle_params, chunk)
        for chunk in self._device_chunks(data)
      ]
      return _reduce(parts, prefix)

    return evaluate

  def _device_chunks(self, data: dict[str, np.ndarray]) -> list[Batch]:
    """The host set `data` as device batches of the layout's `eval_rows` rows, padded to the
    data-parallel size (padding rows are all-zero: they count no token)."""
    size, chunks = self.layout.eval_rows, []
    for start in range(0, len(data["prompts"]), size):
      chunk, _ = pad_rows(
        {k: data[k][start : start + size] for k in BATCH_ARRAYS},
        self.partitioner.data_parallel_size,
      )
      chunks.append(self.partitioner.shard_batch(Batch.of_arrays(chunk)))
    return chunks

  def set_evaluator(
    self, name: str, teacher_params: Any, oracle_params: Any, data: dict[str, np.ndarray]
  ) -> Callable[[Any, str], dict[str, float]]:
    """`evaluate(student_params, prefix)`: `evaluator(name)` on the fixed host set `data`
    against these references, with the set moved to the devices once and, where their logits
    take at most the layout's `reference_bytes` per device (and `eval_chunks` is 1), the
    references run once: later evaluations run the student only. The sums are those of
    `evaluator`."""
    chunks = self._device_chunks(data)
    cfg, layout = self.config, self.layout
    rows = sum(chunk.prompts.shape[0] for chunk in chunks) // self.partitioner.data_parallel_size
    ref_bytes = 2 * 4 * rows * cfg.task.response_length * cfg.task.vocab_size
    if layout.eval_chunks != 1 or ref_bytes > min(layout.reference_bytes, REFERENCE_CACHE_BYTES):
      full = self.evaluator(name)
      return lambda student_params, prefix: full(
        student_params, teacher_params, oracle_params, data, prefix
      )
    references = self._once(
      ("references",), lambda: reference_program(self.models, self.partitioner)
    )
    against = self._once(
      ("eval_against", name),
      lambda: eval_against_program(getattr(self.models, name), self.partitioner),
    )
    refs = [references(teacher_params, oracle_params, chunk) for chunk in chunks]

    def evaluate(student_params, prefix):
      parts = [against(student_params, chunk, ref) for chunk, ref in zip(chunks, refs)]
      return _reduce(parts, prefix)

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
          {k: data[k][start : start + size] for k in BATCH_ARRAYS},
          partitioner.data_parallel_size,
        )
        top = compiled(teacher_params, partitioner.shard_batch(Batch.of_arrays(chunk)))
        parts.append([partitioner.to_host(x)[:rows] for x in (top.values, top.indices, top.tail)])
      values, indices, tail = (np.concatenate(column) for column in zip(*parts))
      return {"top_values": values, "top_indices": indices.astype(index_dtype), "top_tail": tail}

    return fn

  def frozen(self, name: str, params: Any) -> Any:
    """Model `name`'s `params` in stage 2's `frozen_dtype`, in their shards."""
    return self.partitioner.cast(getattr(self.models, name), params, self.config.frozen_dtype)
