"""Batch sources: where each distillation batch comes from, one class per data regime.

A regime is a `BatchSource` subclass registered under its name (`@register`); the config's
`regimes` names them, and adding one is one class and its `@register` line (a test registers
its own). A source is built for one run from a `SourceContext` and gives

- `batch_at(step, student_params) -> Batch`: the batch of `step`, a pure function of the seed
  and the step (and, on-policy, of the student's parameters then), so a resumed run sees the
  batches an uninterrupted one would;
- `train_set() -> {prompts, responses, mask}`: the training-prompt evaluation set;

and describes its own cost before it runs (`work`: per-run work items besides the steps and
the evaluations; `phases`: phases of its own, as the offline dataset's), which the plan and the
progress lines read. Every source distils from the same teacher: `SourceContext.teacher_params`,
the frozen teacher in stage 2's `frozen_dtype`.

Registered: `offline` (N prompts x k teacher generations built once, replayed for epochs),
`online_teacher` (fresh teacher samples every step), `online_student` (on-policy student
samples), `mixture` (per example, a student sample with probability `mixture.student_fraction`,
else a teacher one: GKD's lambda).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from th_distill.data import offline_dataset, regimes
from th_distill.data.batch import Batch
from th_distill.observing.progress import Phase, RunClock, Work
from th_distill.stages.keys import Purpose, key

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig
  from th_distill.rundir.layout import RunDirectory
  from th_distill.training.programs import Programs

OFFLINE_DATASET = offline_dataset.PHASE

# FLOPs per row of one model: cost(kind, model) with kind 'generate' or 'forward'.
CostFn = Callable[[str, str], float]


@dataclasses.dataclass
class SourceContext:
  """What a source may use: the run's config and programs, the frozen teacher's parameters, the
  prompt pools ({'oracle', 'distill', 'eval'}: [P, Li] int32), the run directory (for data it
  caches), the run's clock (phases of its own) and the regime's progress phase (to count the
  work it does)."""

  config: RunConfig
  programs: Programs
  teacher_params: Any
  pools: dict[str, np.ndarray]
  run_dir: RunDirectory
  clock: RunClock
  phase: Phase


class BatchSource(abc.ABC):
  """One data regime (see the module docstring). Subclasses set `regime` and implement
  `batch_at` and `train_set`; `work` and `phases` describe their cost."""

  regime: ClassVar[str]

  def __init__(self, context: SourceContext):
    self.context = context

  @abc.abstractmethod
  def batch_at(self, step: int, student_params: Any) -> Batch:
    """The batch of `step`: [B, Li] prompts, [B, Lt] responses and mask (host or device)."""

  @abc.abstractmethod
  def train_set(self) -> dict[str, np.ndarray]:
    """The training-prompt evaluation set (host arrays prompts, responses, mask)."""

  @classmethod
  def work(cls, config: RunConfig, cost: CostFn) -> list[Work]:
    """Work items of one run besides its steps and evaluations (none by default)."""
    del config, cost
    return []

  @classmethod
  def phases(cls, config: RunConfig, cost: CostFn) -> list[Phase]:
    """Phases of their own that a run of this source needs first (none by default)."""
    del config, cost
    return []

  @classmethod
  def train_rows(cls, config: RunConfig) -> int:
    """Rows of the training-prompt evaluation set."""
    return min(config.eval.num_train_prompts, config.online_prompt_count())


REGIMES: dict[str, type[BatchSource]] = {}


def register(cls: type[BatchSource]) -> type[BatchSource]:
  """Registers a source under its `regime` name (a class decorator)."""
  REGIMES[cls.regime] = cls
  return cls


def source_class(regime: str) -> type[BatchSource]:
  """The source registered as `regime`; KeyError naming the registered ones."""
  if regime not in REGIMES:
    raise KeyError(f"No batch source {regime!r}; registered: {tuple(REGIMES)}")
  return REGIMES[regime]


def online_prompts(config: RunConfig, pools: dict[str, np.ndarray]) -> np.ndarray:
  """The prompts [P, Li] the online regimes draw from: the offline arm's N prompts
  (`online.prompts = 'offline'`, so only the responses differ between the arms) or the whole
  distillation pool (`'pool'`)."""
  return pools["distill"][: config.online_prompt_count()]


@register
class Offline(BatchSource):
  """The fixed N x k teacher dataset, sampled once into `WORKDIR/offline_dataset.npz`, in
  seeded epochs (`regimes.offline_batches`); its training-prompt set is its own first rows."""

  regime = "offline"

  def __init__(self, context: SourceContext):
    super().__init__(context)
    config = context.config
    self.data = offline_dataset.load_or_build(context)
    self._batch_at = regimes.offline_batches(self.data, config.student.batch_size, config.seed)

  def batch_at(self, step: int, student_params: Any) -> Batch:
    return self._batch_at(step, student_params)

  def train_set(self) -> dict[str, np.ndarray]:
    rows = self.context.config.eval.num_train_prompts
    return {k: self.data[k][:rows] for k in ("prompts", "responses", "mask")}

  @classmethod
  def train_rows(cls, config: RunConfig) -> int:
    return min(config.eval.num_train_prompts, config.offline.size)

  @classmethod
  def phases(cls, config: RunConfig, cost: CostFn) -> list[Phase]:
    return [
      Phase(
        OFFLINE_DATASET,
        f"stage 2: {OFFLINE_DATASET} (teacher)",
        [Work("samples", "sample", config.offline.size, cost("generate", "teacher"))],
      )
    ]


class Online(BatchSource):
  """Fresh samples every step on prompts drawn uniformly from `online_prompts`
  (`regimes.online_batches`: step t's keys are `fold_in(rng, t)` split four ways); the
  training-prompt set is one teacher sample on each of the first training prompts.
  `samplers`: the models sampled each step."""

  samplers: ClassVar[tuple[str, ...]]
  GENERATED = "generated batches"
  TRAIN_SET = "train-prompt samples"

  def __init__(self, context: SourceContext):
    super().__init__(context)
    config, programs = context.config, context.programs
    self.prompts = online_prompts(config, context.pools)
    self._batch_at = regimes.online_batches(
      self.regime,
      self.prompts,
      config.student.batch_size,
      key(config.seed, Purpose.ONLINE),
      programs.sampler("teacher"),
      programs.sampler("student"),
      context.teacher_params,
      config.mixture.student_fraction,
    )

  def batch_at(self, step: int, student_params: Any) -> Batch:
    batch = self._batch_at(step, student_params)
    self.context.phase.advance(self.GENERATED)
    return batch

  def train_set(self) -> dict[str, np.ndarray]:
    context = self.context
    config = context.config
    sample = context.phase.counted(context.programs.host_sampler("teacher"), self.TRAIN_SET)
    return regimes.build_offline(
      sample,
      context.teacher_params,
      self.prompts[: config.eval.num_train_prompts],
      1,
      key(config.seed, Purpose.TRAIN_PROMPT_SET),
    )

  @classmethod
  def work(cls, config: RunConfig, cost: CostFn) -> list[Work]:
    per_step = config.student.batch_size * sum(cost("generate", m) for m in cls.samplers)
    return [
      Work(cls.GENERATED, "sample", config.student.steps, per_step),
      Work(cls.TRAIN_SET, "sample", cls.train_rows(config), cost("generate", "teacher")),
    ]


@register
class OnlineTeacher(Online):
  """Fresh teacher samples every step."""

  regime = "online_teacher"
  samplers = ("teacher",)


@register
class OnlineStudent(Online):
  """Fresh student samples every step (on-policy)."""

  regime = "online_student"
  samplers = ("student",)


@register
class Mixture(Online):
  """Per example, the student's sample with probability `mixture.student_fraction`, else the
  teacher's (both sampled on the same prompts)."""

  regime = "mixture"
  samplers = ("teacher", "student")
