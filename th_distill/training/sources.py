"""Batch sources: where each distillation batch comes from, one class per data regime.

A regime is a `BatchSource` subclass registered under its name (`@register`), its own sampling
included; the config's `regimes` names them, and adding one is one class and its `@register`
line (a test registers its own). A source is built for one run from a `SourceContext` and gives

- `batch_at(step, student_params) -> Batch`: the batch of `step`, a pure function of the seed
  and the step (and, on-policy, of the student's parameters then), so a resumed run sees the
  batches an uninterrupted one would: its own `draw`'s, or fresh teacher samples after a
  `refresh`;
- `needs_params_at(step)`: whether the batches drawn at the top of `step` depend on the
  student's parameters of that step (True by default; offline and teacher-only sources say
  False), so the trainer may ask for the batches of several steps at once
  (th_distill.training.dispatch) everywhere else;
- `train_set() -> {prompts, responses, mask}`: the training-prompt evaluation set;
- `state(step)` / `load_state(state)`: what it must carry across a checkpoint at `step` to give
  the same batches after a resume (None when it needs nothing: the trainer then saves nothing
  for it), e.g. batches sampled ahead by an asynchronous pipeline;
- `refreshes(config)` / `refresh(step)` / `refreshed_at`: whether the hacking detector's firing
  switches the run to fresh teacher samples (`detection.on_detect = 'refresh'`, every source
  but the online ones, whose batches are fresh already), the switch, and its step;

and describes its own cost before it runs (`generated`: the teacher and student samples a run
of so many steps draws, `generated_after` if it refreshed; `work`: per-run work items besides
the steps and the evaluations; `phases`: phases of its own, as the offline dataset's), which
the plan, the progress lines and the summaries' generation cost read. Every source distils from
the same teacher: `SourceContext.teacher_params`, the frozen teacher in stage 2's
`frozen_dtype`.

Registered: `offline` (N prompts x k teacher generations built once, replayed for epochs, and
regenerated every `offline.refresh_every` steps if set), `online_teacher` (fresh teacher samples
every step), `online_student` (on-policy student samples), `mixture` (per example, a student
sample with probability `mixture.student_fraction`, else a teacher one: GKD's lambda). The online
ones (`Online`) draw prompts and keys alike (`regimes.online_batches`) and differ in `respond`,
their responses; they train on each sampled batch `online.reuse` times and sample the student's
part with its parameters `online.staleness` steps old (`OnlineSchedule`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from th_distill.config.run_config import REGIMES
from th_distill.data import regimes
from th_distill.data.batch import BATCH_ARRAYS, Batch, PromptSet
from th_distill.observing.progress import Phase, Work
from th_distill.training import offline_dataset
from th_distill.training.keys import Purpose, key
from th_distill.training.source_context import SourceContext

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig

OFFLINE_DATASET = offline_dataset.PHASE

# FLOPs per row of one model: cost(kind, model) with kind 'generate' or 'forward'.
CostFn = Callable[[str, str], float]


class BatchSource(abc.ABC):
  """One data regime (see the module docstring). Subclasses set `regime` and implement `draw`
  and `train_set`; `work` and `phases` describe their cost."""

  regime: ClassVar[str]
  FRESH = "fresh batches after the refresh"  # the progress item of the batches after it

  def __init__(self, context: SourceContext):
    self.context = context
    self.refreshed_at: int | None = None  # the step of the `refresh`, if any
    self._fresh: regimes.BatchFn | None = None

  def batch_at(self, step: int, student_params: Any) -> Batch:
    """The batch of `step`: [B, Li] prompts and their mask, [B, Lt] responses and their mask
    (host or device): `draw`'s, or from a `refresh` at or before `step` on, a fresh teacher
    batch."""
    if self._fresh is None or step < self.refreshed_at:
      return self.draw(step, student_params)
    self.context.phase.advance(self.FRESH)
    return self._fresh(step, student_params)

  @abc.abstractmethod
  def draw(self, step: int, student_params: Any) -> Batch:
    """This regime's own batch of `step` (`batch_at`'s until a refresh)."""

  @abc.abstractmethod
  def train_set(self) -> dict[str, np.ndarray]:
    """The training-prompt evaluation set (host arrays `batch.BATCH_ARRAYS`)."""

  def needs_params_at(self, step: int) -> bool:
    """Whether `batch_at` at the top of `step` draws on the student's parameters then (True
    unless a source knows better: a dispatch of several steps then begins at `step`)."""
    del step
    return True

  def state(self, step: int) -> Any | None:
    """What a checkpoint at `step` must hold for the batches of steps >= `step` (a pytree of
    arrays of a fixed structure), or None (the default: the batches follow from the seed)."""
    del step
    return None

  def load_state(self, state: Any) -> None:
    """Takes back `state` as restored from a checkpoint (`state(0)`'s structure)."""
    del state

  @classmethod
  def refreshes(cls, config: RunConfig) -> bool:
    """Whether stage 2 calls `refresh` when the hacking detector fires: under
    `detection.on_detect = 'refresh'` (sources whose batches are fresh samples already say
    False: 'refresh' then acts as 'continue')."""
    return config.detection.on_detect == "refresh"

  def refresh(self, step: int) -> None:
    """From `step` on (also on a resume past `step`), a fresh `online_teacher` batch every step,
    the batch of step t sampled with step t's key as that arm's (`online.reuse` and
    `online.staleness` do not apply)."""
    self.refreshed_at, self._fresh = step, OnlineTeacher.sampler(self.context)

  @classmethod
  def generated(cls, config: RunConfig, steps: int) -> dict[str, int]:
    """{'teacher': n, 'student': n}: the samples of each model that a run of `steps` steps
    draws for its training data (the evaluations' samples are not counted)."""
    del config, steps
    return {"teacher": 0, "student": 0}

  @classmethod
  def generated_after(cls, config: RunConfig, steps: int, refreshed_at: int) -> dict[str, int]:
    """`generated` of a run of `steps` steps that refreshed at step `refreshed_at`."""
    drawn = cls.generated(config, min(steps, refreshed_at))
    fresh = config.student.batch_size * max(steps - refreshed_at, 0)
    return {"teacher": drawn["teacher"] + fresh, "student": drawn["student"]}

  @classmethod
  def work(cls, config: RunConfig, cost: CostFn) -> list[Work]:
    """Work items of one run besides its steps and evaluations (none by default)."""
    del config, cost
    return []

  @classmethod
  def done_work(cls, config: RunConfig, start: int) -> dict[str, int]:
    """Units of each `work` item done before a run resumed at step `start`."""
    del config, start
    return {}

  @classmethod
  def phases(cls, config: RunConfig, cost: CostFn) -> list[Phase]:
    """Phases of their own that a run of this source needs first (none by default)."""
    del config, cost
    return []

  @classmethod
  def train_rows(cls, config: RunConfig) -> int:
    """Rows of the training-prompt evaluation set."""
    return min(config.eval.num_train_prompts, config.online_prompt_count())


def register(cls: type[BatchSource]) -> type[BatchSource]:
  """Registers a source under its `regime` name (a class decorator)."""
  REGIMES[cls.regime] = cls
  return cls


def source_class(regime: str) -> type[BatchSource]:
  """The source registered as `regime`; KeyError naming the registered ones."""
  if regime not in REGIMES:
    raise KeyError(f"No batch source {regime!r}; registered: {tuple(REGIMES)}")
  return REGIMES[regime]


def online_prompts(config: RunConfig, pools: dict[str, PromptSet]) -> PromptSet:
  """The prompts (P rows) the online regimes draw from: the offline arm's N prompts
  (`online.prompts = 'offline'`, so only the responses differ between the arms) or the whole
  distillation pool (`'pool'`)."""
  return pools["distill"][: config.online_prompt_count()]


@register
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
        OFFLINE_DATASET,
        f"stage 2: {OFFLINE_DATASET} (teacher)",
        [Work("samples", "sample", config.offline.size, cost("generate", "teacher"))],
      )
    ]


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
  (`sampler`), when `OnlineSchedule` says; the batches sampled ahead are carried across
  checkpoints. The training-prompt set is one teacher sample on each of the first training
  prompts. Subclasses set `regime` and `samplers` (the models `respond` samples) and implement
  `respond`."""

  samplers: ClassVar[tuple[str, ...]]
  GENERATED = "generated batches"
  TRAIN_SET = "train-prompt samples"

  def __init__(self, context: SourceContext):
    super().__init__(context)
    config = context.config
    self.prompts = online_prompts(config, context.pools)
    self.schedule = self.schedule_of(config)
    if config.online.staleness and not self.schedule.staleness:
      logging.warning(
        "online.staleness = %d has no effect on %s: the teacher is frozen, so its samples are "
        "the fresh ones.",
        config.online.staleness,
        self.regime,
      )
    self._sample = self.sampler(context)
    self._ahead: dict[int, Batch] = {}  # group -> its batch, sampled and not yet done with

  @classmethod
  def sampler(cls, context: SourceContext) -> regimes.BatchFn:
    """`sample(step, student_params) -> Batch`: this regime's fresh batch with the key of `step`
    (`regimes.online_batches` on `online_prompts`, with `respond`'s responses)."""
    config = context.config
    return regimes.online_batches(
      online_prompts(config, context.pools),
      config.student.batch_size,
      key(config.seed, Purpose.ONLINE),
      functools.partial(cls.respond, context),
    )

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


@register
class OnlineTeacher(Online):
  """Fresh teacher samples every step."""

  regime = "online_teacher"
  samplers = ("teacher",)

  @classmethod
  def respond(
    cls, context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
  ) -> tuple[Any, Any]:
    del student_params
    return context.teacher_samples(prompts, keys.teacher)


@register
class OnlineStudent(Online):
  """Fresh student samples every step (on-policy)."""

  regime = "online_student"
  samplers = ("student",)

  @classmethod
  def respond(
    cls, context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
  ) -> tuple[Any, Any]:
    return context.student_samples(student_params, prompts, keys.student)


@register
class Mixture(Online):
  """Per example, the student's sample with probability `mixture.student_fraction`, else the
  teacher's (both sampled on the same prompts, each with its own key; the choice with
  `keys.mixture`)."""

  regime = "mixture"
  samplers = ("teacher", "student")

  @classmethod
  def respond(
    cls, context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
  ) -> tuple[Any, Any]:
    teacher = OnlineTeacher.respond(context, prompts, keys, student_params)
    student = OnlineStudent.respond(context, prompts, keys, student_params)
    fraction = context.config.mixture.student_fraction
    use_student = jax.random.bernoulli(keys.mixture, fraction, (len(prompts), 1))
    return tuple(jnp.where(use_student, s, t) for s, t in zip(student, teacher, strict=True))
