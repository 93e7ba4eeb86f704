"""The `offline` data regime: a fixed N x k teacher dataset (`th_distill.training.offline_dataset`)
replayed in seeded epochs, optionally sampled afresh every `offline.refresh_every` steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from th_distill.data import regimes
from th_distill.data.batch import BATCH_ARRAYS, Batch
from th_distill.observing.progress import Phase, Work
from th_distill.training import offline_dataset
from th_distill.training.batch_source import BatchSource, CostFn
from th_distill.training.source_context import SourceContext

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig


class Offline(BatchSource):
  """The fixed N x k teacher dataset (`offline_dataset`), sampled once into
  `WORKDIR/offline_dataset.npz`, in seeded epochs (`regimes.offline_batches`); with
  `offline.refresh_every` R > 0 it is sampled afresh on the same prompts every R steps (steps
  [gR, (g+1)R) read generation g from its first epoch). Its training-prompt set is generation
  0's first rows."""

  regime = "offline"
  REFRESHED = "refreshed samples"

  def __init__(self, context: SourceContext):
    super().__init__(context)
    self.data = offline_dataset.load_or_build(context)
    self._current = (0, self.data)  # (generation, its dataset)

  def _dataset(self, generation: int) -> dict[str, np.ndarray]:
    if self._current[0] != generation:
      context = self.context
      sample = context.phase.counted(context.programs.host_sampler("teacher"), self.REFRESHED)
      self._current = (generation, offline_dataset.sample(context, sample, generation))
    return self._current[1]

  def draw(self, step: int, student_params: Any) -> Batch:
    config = self.context.config
    every = config.offline.refresh_every
    generation, local = divmod(step, every) if every else (0, step)
    batches = regimes.offline_batches(
      self._dataset(generation), config.student.batch_size, config.seed, generation
    )
    return batches(local, student_params)

  def needs_params_at(self, step: int) -> bool:
    del step  # the teacher's samples, drawn whatever the student is
    return False

  def train_set(self) -> dict[str, np.ndarray]:
    rows = self.context.config.eval.num_train_prompts
    return {k: self.data[k][:rows] for k in BATCH_ARRAYS}

  @classmethod
  def train_rows(cls, config: RunConfig) -> int:
    return min(config.eval.num_train_prompts, config.offline.size)

  @staticmethod
  def generations(config: RunConfig, steps: int) -> int:
    """Datasets sampled by a run of `steps` steps (generation 0 always)."""
    every = config.offline.refresh_every
    return 1 + ((steps - 1) // every if every and steps > 0 else 0)

  @classmethod
  def generated(cls, config: RunConfig, steps: int) -> dict[str, int]:
    return {"teacher": config.offline.size * cls.generations(config, steps), "student": 0}

  @classmethod
  def work(cls, config: RunConfig, cost: CostFn) -> list[Work]:
    refreshes = cls.generations(config, config.student.steps) - 1
    if not refreshes:
      return []
    size = config.offline.size
    return [Work(cls.REFRESHED, "sample", refreshes * size, cost("generate", "teacher"))]

  @classmethod
  def done_work(cls, config: RunConfig, start: int) -> dict[str, int]:
    return {cls.REFRESHED: config.offline.size * (cls.generations(config, start) - 1)}

  @classmethod
  def phases(cls, config: RunConfig, cost: CostFn) -> list[Phase]:
    return [
      Phase(
        offline_dataset.PHASE,
        f"stage 2: {offline_dataset.PHASE} (teacher)",
        [Work("samples", "sample", config.offline.size, cost("generate", "teacher"))],
      )
    ]
