"""What a batch source (`th_distill.training.sources`) is built from: `SourceContext`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig
  from th_distill.data.batch import PromptSet
  from th_distill.observing.progress import Phase, RunClock
  from th_distill.rundir.layout import RunDirectory
  from th_distill.training.programs import Programs


@dataclasses.dataclass
class SourceContext:
  """What a source may use: the run's config and programs, the frozen teacher's parameters, the
  distillation prompt pool (`prompts`: every prompt a regime may train on; the offline and
  online prompts are its first rows), the run directory (for data it caches), the run's clock
  (phases of its own) and the regime's progress phase (to count the work it does)."""

  config: RunConfig
  programs: Programs
  teacher_params: Any
  prompts: PromptSet
  run_dir: RunDirectory
  clock: RunClock
  phase: Phase

  def teacher_samples(self, prompts: PromptSet, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The frozen teacher's responses [B, Lt] (int32) and their float32 mask to `prompts`
    ([B, Li]), sampled with `rng` (`Programs.sampler`: device arrays split along B)."""
    sample = self.programs.sampler("teacher")
    return sample(self.teacher_params, prompts.tokens, prompts.mask, rng)

  def student_samples(
    self, student_params: Any, prompts: PromptSet, rng: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """`teacher_samples` of the student with `student_params`."""
    return self.programs.sampler("student")(student_params, prompts.tokens, prompts.mask, rng)
