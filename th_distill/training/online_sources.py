"""The online data regimes: fresh samples on prompts drawn uniformly from `online_prompts`
(`Online`, when `OnlineSchedule` says), their responses the teacher's (`online_teacher`), the
student's (`online_student`, on-policy) or, per example, either (`mixture`: GKD's lambda); the
sampling itself is `th_distill.training.online_sampling`'s."""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import numpy as np
from absl import logging

from th_distill.data import regimes
from th_distill.data.batch import BATCH_ARRAYS, Batch, PromptSet
from th_distill.observing.progress import Work
from th_distill.training.batch_source import BatchSource, CostFn
from th_distill.training.keys import Purpose, key
from th_distill.training.online_sampling import (
  fresh_batches,
  mixture_responses,
  online_prompts,
  student_responses,
  teacher_responses,
)
from th_distill.training.source_context import SourceContext

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig


@dataclasses.dataclass(frozen=True)
class OnlineSchedule:
  """When the online regimes sample. Steps come in groups of `reuse`: group g (steps
  [gU, (g+1)U)) trains on one batch, sampled with the key of step gU at the top of step
  max(gU - `staleness`, 0), i.e. with the student's parameters `staleness` steps older than its
  first step (all groups whose first step is <= staleness are sampled at step 0 from the
  initial parameters). `reuse` 1 and `staleness` 0: a fresh batch each step."""

  reuse: int = 1
  staleness: int = 0

  def group(self, step: int) -> int:
    return step // self.reuse

  def sampled_at(self, step: int) -> range:
    """The groups whose batch is sampled at the top of `step`."""
    if step == 0:
      return range(self.staleness // self.reuse + 1)
    group, offset = divmod(step + self.staleness, self.reuse)
    return range(group, group + 1) if offset == 0 else range(0)

  def groups_sampled(self, steps: int) -> int:
    """Batches sampled by a run of `steps` steps (the tops of steps 0..steps-1)."""
    return (steps - 1 + self.staleness) // self.reuse + 1 if steps > 0 else 0

  @property
  def slots(self) -> int:
    """An upper bound on the batches sampled ahead at a checkpoint; 0 when there are none."""
    return 0 if (self.reuse, self.staleness) == (1, 0) else self.staleness // self.reuse + 2


class Online(BatchSource):
  """Fresh samples on prompts drawn uniformly from `online_prompts`, `respond`'s responses
  (`online_sampling.fresh_batches`), when `OnlineSchedule` says; the batches sampled ahead are
  carried across checkpoints. The training-prompt set is one teacher sample on each of the
  first training prompts. Subclasses set `regime` and `samplers` (the models `respond` samples)
  and implement `respond`."""

  samplers: ClassVar[tuple[str, ...]]
  GENERATED = "generated batches"
  TRAIN_SET = "train-prompt samples"

  def __init__(self, context: SourceContext):
    super().__init__(context)
    config = context.config
    self.prompts = online_prompts(config, context.prompts)
    self.schedule = self.schedule_of(config)
    if config.online.staleness and not self.schedule.staleness:
      logging.warning(
        "online.staleness = %d has no effect on %s: the teacher is frozen, so its samples are "
        "the fresh ones.",
        config.online.staleness,
        self.regime,
      )
    self._sample = fresh_batches(context, self.respond)
    self._ahead: dict[int, Batch] = {}  # group -> its batch, sampled and not yet done with

  @classmethod
  @abc.abstractmethod
  def respond(
    cls, context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
  ) -> tuple[Any, Any]:
    """The responses [B, Lt] (int32) and their float32 mask to `prompts` ([B, Li]) at one
    step, sampled with that step's `keys` (and the student's `student_params`)."""

  @classmethod
  def refreshes(cls, config: RunConfig) -> bool:
    del config  # its batches are fresh samples already
    return False

  @classmethod
  def schedule_of(cls, config: RunConfig) -> OnlineSchedule:
    """The schedule of this regime (staleness is void where only the teacher samples)."""
    stale = config.online.staleness if "student" in cls.samplers else 0
    return OnlineSchedule(config.online.reuse, stale)

  def draw(self, step: int, student_params: Any) -> Batch:
    schedule = self.schedule
    for group in schedule.sampled_at(step):
      self._ahead[group] = self._sample(group * schedule.reuse, student_params)
      self.context.phase.advance(self.GENERATED)
    current = schedule.group(step)
    self._ahead = {g: b for g, b in self._ahead.items() if g >= current}
    return self._ahead[current]

  def needs_params_at(self, step: int) -> bool:
    return "student" in self.samplers and bool(self.schedule.sampled_at(step))

  def state(self, step: int) -> Any | None:
    slots = self.schedule.slots
    if not slots:
      return None
    config, partitioner = self.context.config, self.context.programs.partitioner
    b, li, lt = config.student.batch_size, config.task.prompt_length, config.task.response_length
    groups = sorted(g for g in self._ahead if g >= self.schedule.group(step))
    if len(groups) > slots:
      raise AssertionError(f"{len(groups)} batches sampled ahead exceed the {slots} slots")
    state = {
      "groups": np.full(slots, -1, np.int32),
      "prompts": np.zeros((slots, b, li), np.int32),
      "prompt_mask": np.zeros((slots, b, li), bool),
      "responses": np.zeros((slots, b, lt), np.int32),
      "mask": np.zeros((slots, b, lt), np.float32),
    }
    for slot, group in enumerate(groups):
      state["groups"][slot] = group
      for name in BATCH_ARRAYS:
        value = getattr(self._ahead[group], name)
        is_device = isinstance(value, jax.Array)
        state[name][slot] = partitioner.to_host(value) if is_device else value
    return jax.device_put(state, partitioner.replicated)

  def load_state(self, state: Any) -> None:
    arrays = {name: np.asarray(value) for name, value in state.items()}
    self._ahead = {
      int(group): Batch.of_arrays(arrays, slot)
      for slot, group in enumerate(arrays["groups"])
      if group >= 0
    }

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
  def generated(cls, config: RunConfig, steps: int) -> dict[str, int]:
    rows = config.student.batch_size * cls.schedule_of(config).groups_sampled(steps)
    return {model: rows if model in cls.samplers else 0 for model in ("teacher", "student")}

  @classmethod
  def work(cls, config: RunConfig, cost: CostFn) -> list[Work]:
    per_batch = config.student.batch_size * sum(cost("generate", m) for m in cls.samplers)
    batches = cls.schedule_of(config).groups_sampled(config.student.steps)
    return [
      Work(cls.GENERATED, "sample", batches, per_batch),
      Work(cls.TRAIN_SET, "sample", cls.train_rows(config), cost("generate", "teacher")),
    ]

  @classmethod
  def done_work(cls, config: RunConfig, start: int) -> dict[str, int]:
    return {cls.GENERATED: cls.schedule_of(config).groups_sampled(start)}


class OnlineTeacher(Online):
  """Fresh teacher samples every step."""

  regime = "online_teacher"
  samplers = ("teacher",)
  respond = staticmethod(teacher_responses)


class OnlineStudent(Online):
  """Fresh student samples every step (on-policy)."""

  regime = "online_student"
  samplers = ("student",)
  respond = staticmethod(student_responses)


class Mixture(Online):
  """Per example, the student's sample with probability `mixture.student_fraction`, else the
  teacher's (`online_sampling.mixture_responses`)."""

  regime = "mixture"
  samplers = ("teacher", "student")
  respond = staticmethod(mixture_responses)
