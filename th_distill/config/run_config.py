"""`RunConfig`: the whole experiment config, typed and frozen, read once from the config file.

The config file is an `ml_collections.ConfigDict` (what a user writes and overrides on the
command line); `RunConfig.from_config` reads it into one frozen section per config section
(th_distill.config.sections) and the top-level scalars. Everything after the boundary (stages,
batch sources, programs, the plan) takes this object or the settings it derives
(`sampling_settings`, `distill`, `eval_settings`), never the dict. `problems()` lists every `(field, message)`
of the sections and the checks that span them; `record(sections)` gives the values a stage
depends on, as recorded in its marker (th_distill.rundir.records).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from th_distill.config import sections as s
from th_distill.config.settings import (
  DistillSettings,
  EvalSettings,
  LossSettings,
  Problem,
  ProgramSettings,
  SamplingSettings,
  failed,
)
from th_distill.data import prompts as prompt_lib
from th_distill.data import vocabularies
from th_distill.detection import DetectorSettings
from th_distill.detection import config as detection_config
from th_distill.models import ModelConfig, model_config_of
from th_distill.models.tokens import SpecialTokens
from th_distill.observing.eval_schedule import EvaluationSchedule

MODELS = ("oracle", "teacher", "student")
# The data regimes a config may name: the built-in ones (their sections are below), known here
# before `th_distill.training.sources` is imported, and every registered batch source class by
# name (`training.batch_source.register` fills `REGIMES`; `training.sources` registers the
# built-in ones first).
BUILT_IN_REGIMES = ("offline", "online_teacher", "online_student", "mixture")
REGIMES: dict[str, type] = {}
# Bounds of the counts a run is planned from: the optimisers' step counters are int32, and each
# evaluation is a metrics row and a pass over the evaluation sets.
MAX_STEPS = 2**31 - 1
MAX_EVALUATIONS = 100_000
MAX_LOG_POINTS = 10_000


def model_of(section: Mapping[str, Any]) -> ModelConfig:
  """The config of a model sub-config (`config.student.model`, ...): a `T5Config`, or its
  `family`'s config (`th_distill.models.families`); TypeError or ValueError if a field is
  unknown or invalid."""
  return model_config_of(section)


@dataclasses.dataclass(frozen=True)
class DetectionSection:
  """The hacking detector during training: its settings (`detector`), the watched `metric`,
  what it does when it fires (`on_detect`) and which parameters it keeps (`keep`)."""

  detector: DetectorSettings
  metric: str
  on_detect: str
  keep: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every config section, typed. Field names are the config's; `values` is the config as a
  plain dict (what the run directory records)."""

  seed: int
  regimes: tuple[str, ...]
  task: s.TaskSection
  prompts: s.PromptsSection
  oracle: s.OracleSection
  teacher: s.TeacherSection
  student: s.StudentSection
  loss: LossSettings
  sampling: s.SamplingSection
  offline: s.OfflineSection
  online: s.OnlineSection
  mixture: s.MixtureSection
  eval: s.EvalSection
  mesh: s.MeshSection
  detection: DetectionSection
  eval_every: int
  eval_log_points: int
  checkpoint_every: int
  on_nonfinite: str
  frozen_dtype: str
  sequence_chunks: int
  hacking_threshold_pct: float
  write_figures: bool
  values: Mapping[str, Any] = dataclasses.field(compare=False, hash=False, repr=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> RunConfig:
    """The typed config of `config` (checked values: `th_distill.config.validate`). Raises
    TypeError or ValueError if a model sub-config or the detector settings cannot be built."""
    c = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    models = {name: model_of(c[name]["model"]) for name in MODELS}
    det = c["detection"]
    detector = DetectorSettings(**{k: det[k] for k in detection_config.SETTINGS_FIELDS if k in det})
    return cls(
      seed=c["seed"],
      regimes=tuple(c["regimes"]),
      task=s.read_section(s.TaskSection, c["task"]),
      prompts=s.read_section(s.PromptsSection, c["prompts"]),
      oracle=s.read_section(s.OracleSection, c["oracle"], model=models["oracle"]),
      teacher=s.read_section(s.TeacherSection, c["teacher"], model=models["teacher"]),
      student=s.read_section(s.StudentSection, c["student"], model=models["student"]),
      loss=s.read_section(LossSettings, c["loss"]),
      sampling=s.read_section(s.SamplingSection, c["sampling"]),
      offline=s.read_section(s.OfflineSection, c["offline"]),
      online=s.read_section(s.OnlineSection, c["online"]),
      mixture=s.read_section(s.MixtureSection, c["mixture"]),
      eval=s.read_section(s.EvalSection, c["eval"]),
      mesh=s.read_section(s.MeshSection, c["mesh"]),
      detection=DetectionSection(detector, det["metric"], det["on_detect"], tuple(det["keep"])),
      **{k: c[k] for k in TOP_LEVEL},
      values=json.loads(json.dumps(c, default=list)),
    )

  # The settings the compiled programs take (hashable static arguments).
  @functools.cached_property
  def tokens(self) -> SpecialTokens:
    """The task's special tokens (pad, stop and BOS ids), read once from its vocabulary's files
    (`data.vocabularies.task_vocabulary`): the synthetic task's are T5's."""
    return vocabularies.task_vocabulary(self.task).special_tokens

  @property
  def sampling_settings(self) -> SamplingSettings:
    return self.sampling.settings(self.task.response_length, self.tokens)

  @property
  def distill(self) -> DistillSettings:
    return DistillSettings(
      self.loss,
      self.student.optimizer,
      self.student.micro_batches,
      self.sequence_chunks,
      self.on_nonfinite,
      self.frozen_dtype,
    )

  @property
  def program_settings(self) -> ProgramSettings:
    """What the compiled programs take (`training.programs.Programs`)."""
    return ProgramSettings(
      self.sampling_settings,
      self.distill,
      self.task.prompt_length,
      self.task.response_length,
      self.task.vocab_size,
      self.eval.batch_size,
      self.mesh.steps_per_dispatch,
    )

  @property
  def eval_settings(self) -> EvalSettings:
    steps = EvaluationSchedule(self.student.steps, self.eval_every, self.eval_log_points)
    return EvalSettings(steps, self.eval.batch_size, self.eval.num_train_prompts)

  def model(self, name: str) -> ModelConfig:
    """The model config (`T5Config`, `DecoderConfig`, ...) of 'oracle', 'teacher' or 'student'."""
    return getattr(self, name).model

  def online_prompt_count(self) -> int:
    """How many prompts the online regimes draw from (`online.prompts`)."""
    return (
      self.offline.num_prompts if self.online.prompts == "offline" else self.prompts.num_distill
    )

  def record(self, sections: tuple[str, ...]) -> dict[str, Any]:
    """{dotted section: its value as recorded} of the named sections ('student.model', ...)."""

    def lookup(path: str) -> Any:
      value: Any = self.values
      for part in path.split("."):
        value = value[part]
      return value

    return {section: lookup(section) for section in sections}

  def problems(self) -> list[Problem]:
    """Every problem of the sections' values and of the checks that span sections (the
    models' and the detector's own checks run when they are built: `config.check_fields`)."""
    task, prompts = self.task, self.prompts
    found = [
      *failed((0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")),
      *self._regime_problems(),
      *self.mesh.problems(),
      *self.sampling.problems(self.task.response_length),
      *self.teacher.problems(),
      *self.distill.problems(),
      *self.student.problems(),
      *self.online.problems(),
      *self.mixture.problems(),
      *self.oracle.problems(task.vocab_size),
      *task.problems(),
    ]
    for name in MODELS:
      vocab = self.model(name).vocab_size
      found += failed(
        (
          vocab == task.vocab_size,
          f"{name}.model.vocab_size",
          f"{vocab} differs from task.vocab_size = {task.vocab_size}; oracle, teacher and "
          "student must share one vocabulary",
        )
      )
    found += prompts.problems() + self._synthetic_prompt_problems() + self.offline.problems()
    n, k = self.offline.num_prompts, self.offline.generations_per_prompt
    found += failed(
      (
        n <= prompts.num_distill,
        "offline.num_prompts",
        f"N = {n} exceeds the distillation prompt pool prompts.num_distill = "
        f"{prompts.num_distill} (N x k = {n * k} examples are drawn from N distinct prompts)",
      )
    )
    found += self._freshness_problems()
    found += self.eval.problems() + self._schedule_problems()
    return found + failed(
      (
        self.sequence_chunks > 0 and task.response_length % self.sequence_chunks == 0,
        "sequence_chunks",
        f"{self.sequence_chunks} must be > 0 and divide task.response_length = "
        f"{task.response_length}",
      )
    )

  def _regime_problems(self) -> list[Problem]:
    added = (r for r in REGIMES if r not in BUILT_IN_REGIMES)
    regimes, known = self.regimes, (*BUILT_IN_REGIMES, *added)
    return failed(
      (len(regimes) > 0, "regimes", "must name at least one regime"),
      *((r in known, "regimes", f"unknown regime {r!r}; allowed: {known}") for r in regimes),
      (len(set(regimes)) == len(regimes), "regimes", "must not repeat a regime"),
    )

  def _freshness_problems(self) -> list[Problem]:
    """Bounds of the freshness and truncation keys that depend on other sections."""
    k, vocab, steps = self.loss.teacher_top_k, self.task.vocab_size, self.student.steps
    return failed(
      (
        k <= vocab,
        "loss.teacher_top_k",
        f"{k} exceeds task.vocab_size = {vocab} (0 = the full vocabulary)",
      ),
      (
        self.online.staleness <= max(steps, 1),
        "online.staleness",
        f"{self.online.staleness} exceeds student.steps = {steps}: no step would use a batch "
        "that old",
      ),
      (
        self.online.reuse <= max(steps, 1),
        "online.reuse",
        f"{self.online.reuse} exceeds student.steps = {steps}",
      ),
    )

  def _synthetic_prompt_problems(self) -> list[Problem]:
    task, p = self.task, self.prompts
    if task.source != "synthetic":
      return []
    tokens = task.vocab_size - prompt_lib.FIRST_TOKEN  # ids 0 and 1 never start a prompt
    pool = p.num_oracle + p.num_distill + p.num_eval
    return failed(
      (
        tokens >= 2,
        "task.vocab_size",
        f"must be >= {prompt_lib.FIRST_TOKEN + 2} for synthetic prompts, got {task.vocab_size}",
      ),
      (  # As data.prompts.zipf_prompts requires: 4 x the pool fits in tokens ** prompt_length.
        tokens < 2
        or task.prompt_length <= 0
        or math.log(4 * max(pool, 1)) <= task.prompt_length * math.log(tokens),
        "task.prompt_length",
        f"{task.prompt_length} tokens over {tokens} ids cannot make {pool} distinct prompts "
        "(prompts.num_*); use longer prompts or fewer of them",
      ),
    )

  def _schedule_problems(self) -> list[Problem]:
    found = failed(
      (self.eval_every > 0, "eval_every", f"must be > 0, got {self.eval_every}"),
      (
        0 <= self.eval_log_points <= MAX_LOG_POINTS,
        "eval_log_points",
        f"must be in [0, {MAX_LOG_POINTS}] (0 = off), got {self.eval_log_points}",
      ),
      (
        self.checkpoint_every > 0,
        "checkpoint_every",
        f"must be > 0, got {self.checkpoint_every}",
      ),
      (self.hacking_threshold_pct >= 0, "hacking_threshold_pct", "must be >= 0"),
    )
    return self._step_bound_problems() + found + self._evaluation_count_problems()

  def _step_bound_problems(self) -> list[Problem]:
    """Step counts against MAX_STEPS."""
    steps = {
      "student.steps": self.student.steps,
      "student.sft_steps": self.student.sft_steps,
      "teacher.steps": self.teacher.steps,
    }
    return failed(
      *(
        (value <= MAX_STEPS, field, f"{value} exceeds the bound {MAX_STEPS} (an int32 count)")
        for field, value in steps.items()
      )
    )

  def _evaluation_count_problems(self) -> list[Problem]:
    """The number of evaluations against MAX_EVALUATIONS (once the schedule's fields are valid)."""
    if not (
      self.eval_every > 0
      and 0 <= self.eval_log_points <= MAX_LOG_POINTS
      and 0 <= self.student.steps <= MAX_STEPS
    ):
      return []
    count = len(self.eval_settings.steps)
    return failed(
      (
        count <= MAX_EVALUATIONS,
        "eval_every",
        f"{self.eval_every} gives {count} evaluations over student.steps = "
        f"{self.student.steps}, more than the bound {MAX_EVALUATIONS}; raise eval_every",
      )
    )


# The config's top-level scalars (every other key is a section).
TOP_LEVEL = (
  "eval_every",
  "eval_log_points",
  "checkpoint_every",
  "on_nonfinite",
  "frozen_dtype",
  "sequence_chunks",
  "hacking_threshold_pct",
  "write_figures",
)
