"""The run's compiled programs: `Programs` gives a run's stages their programs (built by
`th_distill.training.program_builders`) and wraps the samplers and the evaluator for host data,
split into device calls as its `MemoryLayout` says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from th_distill import sampling
from th_distill.config.run_config import RunConfig
from th_distill.config.settings import (
  OptimizerSettings,
  ProgramSettings,
)
from th_distill.data.batch import BATCH_ARRAYS, Batch
from th_distill.partitioning import Partitioner, pad_rows
from th_distill.sampling import SampleFn
from th_distill.training.eval_steps import reduce_eval_sums
from th_distill.training.program_builders import (
  Models,
  eval_against_program,
  eval_program,
  reference_program,
  sampler_program,
  sft_program,
  teacher_top_program,
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
    """The config's own split: `eval.batch_size` rows in `sequence_chunks` chunks (from the
    fields alone: planning reads no vocabulary file)."""
    return cls(None, config.eval.batch_size, config.sequence_chunks)

  @classmethod
  def of_settings(cls, settings: ProgramSettings) -> MemoryLayout:
    """`of_config` from the programs' settings."""
    return cls(None, settings.eval_batch_size, settings.distill.sequence_chunks)


# evaluate(student_params, teacher_params, oracle_params, data, prefix) -> {prefix/name: value}
Evaluator = Callable[[Any, Any, Any, dict[str, np.ndarray], str], dict[str, float]]


def _reduce(parts: list[dict[str, jax.Array]], prefix: str) -> dict[str, float]:
  """The chunks' eval sums added in order on the host, then `reduce_eval_sums`."""
  totals: dict[str, float] = {}
  for sums in parts:
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return reduce_eval_sums(totals, prefix)


class Programs:
  """The compiled programs of one run, each built on first use and reused by every stage: of
  `models` under `settings` (`RunConfig.program_settings`) on `partitioner`'s mesh, host data
  split into device calls as `layout` says (default: `MemoryLayout.of_settings`)."""

  def __init__(
    self,
    models: Models,
    settings: ProgramSettings,
    partitioner: Partitioner,
    layout: MemoryLayout | None = None,
  ):
    self.models, self.settings, self.partitioner = models, settings, partitioner
    self.layout = layout or MemoryLayout.of_settings(settings)
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
      lambda: sampler_program(getattr(self.models, name), self.settings.sampling, partitioner),
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
    settings, layout = self.settings, self.layout
    rows = sum(chunk.prompts.shape[0] for chunk in chunks) // self.partitioner.data_parallel_size
    ref_bytes = 2 * 4 * rows * settings.response_length * settings.vocab_size
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
    loss, partitioner = self.settings.distill.loss, self.partitioner
    size = self.settings.eval_batch_size
    compiled = self._once(
      ("teacher_top",),
      lambda: teacher_top_program(
        self.models.teacher, loss.teacher_top_k, loss.temperature, partitioner
      ),
    )
    index_dtype = np.min_scalar_type(self.settings.vocab_size - 1)

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
    frozen_dtype = self.settings.distill.frozen_dtype
    return self.partitioner.cast(getattr(self.models, name), params, frozen_dtype)
