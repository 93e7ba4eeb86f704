"""`BatchSource`: where each distillation batch comes from, one subclass per data regime
(`th_distill.training.offline_source`, `th_distill.training.online_sources`), registered under its
name by `register` (`th_distill.training.sources` registers the built-in ones and finds a source
by name). A source is built for one run from a `SourceContext` and gives

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
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from th_distill.config.run_config import REGIMES
from th_distill.data import regimes
from th_distill.data.batch import Batch
from th_distill.observing.progress import Phase, Work
from th_distill.training.online_sampling import fresh_batches, teacher_responses
from th_distill.training.source_context import SourceContext

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig

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
    self.refreshed_at, self._fresh = step, fresh_batches(self.context, teacher_responses)

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
