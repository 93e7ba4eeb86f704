"""The config's sections as typed, frozen dataclasses, each with its own checks.

`RunConfig.from_config(config)` (th_distill.config.run_config) reads an `ml_collections`
config into one of each; a section's `problems()` lists `(field, message)` pairs, each field
named as in the config file (`"student.batch_size"`). Checks that need two sections (the
offline N against the prompt pool, every model's vocabulary against the task's) are
`RunConfig.problems`'s. Section fields are the config keys of the same name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from th_distill.config.settings import (
  LossSettings,
  OptimizerSettings,
  Problem,
  SamplingSettings,
  failed,
)
from th_distill.models import ModelConfig
from th_distill.models.tokens import SpecialTokens

ONLINE_PROMPTS = ("offline", "pool")  # where the online regimes draw their prompts
TASK_SOURCES = ("synthetic", "seqio", "prompt_file")
ORACLE_SOURCES = ("synthetic", "checkpoint")
STUDENT_INITS = ("scratch", "sft")

S = TypeVar("S")


def read_section(cls: type[S], values: Mapping[str, Any], **converted: Any) -> S:
  """`cls` from the config section `values` (keys = field names); `converted` replaces fields
  that need a type of their own (a model's `ModelConfig`). Keys the class lacks are left to the
  unknown-field check (`config.check_fields`)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in values.items() if k in names and k not in converted}, **converted)


@dataclasses.dataclass(frozen=True)
class TaskSection:
  """What is generated: token ids < `vocab_size`, prompts of `prompt_length`, responses of at
  most `response_length`; the synthetic task (Zipf prompts), a seqio one (`name`, `vocabulary`,
  `data_dir`), or the user's prompts (`prompt_file`: JSONL, the text in `prompt_field`,
  optionally through `prompt_template` (with `{text}`) and the tokenizer's chat template,
  `chat_template`; tokenized with `vocabulary`: `th_distill.data.prompt_files`)."""

  source: str
  vocab_size: int
  prompt_length: int
  response_length: int
  zipf_exponent: float
  name: str = ""
  vocabulary: str = ""
  data_dir: str = ""
  prompt_file: str = ""
  prompt_field: str = "text"
  prompt_template: str = ""
  chat_template: bool = False

  def problems(self) -> list[Problem]:
    return failed(
      (
        self.source in TASK_SOURCES,
        "task.source",
        f"must be one of {TASK_SOURCES}, got {self.source!r}",
      ),
      (self.vocab_size > 0, "task.vocab_size", f"must be > 0, got {self.vocab_size}"),
      (self.prompt_length > 0, "task.prompt_length", f"must be > 0, got {self.prompt_length}"),
      *self._prompt_file_problems(),
    )

  def _prompt_file_problems(self) -> list[tuple[bool, str, str]]:
    if self.source != "prompt_file":
      return []
    return [
      (
        bool(self.prompt_file),
        "task.prompt_file",
        "must be the path of a JSONL file of prompts when task.source = 'prompt_file'",
      ),
      (
        bool(self.vocabulary),
        "task.vocabulary",
        "must be a Hugging Face tokenizer directory (tokenizer.json; the oracle's checkpoint "
        "directory) or a SentencePiece model file when task.source = 'prompt_file'",
      ),
      (bool(self.prompt_field), "task.prompt_field", "must name the JSONL field of the text"),
      (
        not self.prompt_template or _formats(self.prompt_template),
        "task.prompt_template",
        f"{self.prompt_template!r} must contain '{{text}}' and no other field (a literal "
        "brace is written twice: '{{' or '}}')",
      ),
    ]


def _formats(template: str) -> bool:
  """Whether `template.format(text=...)` works and uses the text."""
  try:
    return template.format(text="x") != template.format(text="")
  except (KeyError, IndexError, ValueError):
    return False


@dataclasses.dataclass(frozen=True)
class PromptsSection:
  """Sizes of the disjoint prompt pools: oracle data, distillation, held-out evaluation."""

  num_oracle: int
  num_distill: int
  num_eval: int

  def problems(self) -> list[Problem]:
    return failed(
      *(
        (getattr(self, k) > 0, f"prompts.{k}", f"must be > 0, got {getattr(self, k)}")
        for k in ("num_oracle", "num_distill", "num_eval")
      )
    )


@dataclasses.dataclass(frozen=True)
class OracleSection:
  """The ground truth: a synthetic random T5 calibrated to `target_entropy` nats per token
  (weights at `weight_scale` x their init scale), or a local checkpoint."""

  source: str
  checkpoint: str
  target_entropy: float
  weight_scale: float
  model: ModelConfig

  def problems(self, vocab_size: int) -> list[Problem]:
    max_entropy = math.log(max(vocab_size, 1))
    synthetic = self.source == "synthetic"
    return failed(
      (
        self.source in ORACLE_SOURCES,
        "oracle.source",
        f"must be 'synthetic' or 'checkpoint', got {self.source!r}",
      ),
      (
        self.source != "checkpoint" or bool(self.checkpoint),
        "oracle.checkpoint",
        "must be a local checkpoint path when oracle.source = 'checkpoint'",
      ),
      (
        not synthetic or 0 < self.target_entropy < max_entropy,
        "oracle.target_entropy",
        f"must be in (0, log task.vocab_size = {max_entropy:.3f}) nats, got {self.target_entropy}",
      ),
      (
        not synthetic or self.weight_scale > 0,
        "oracle.weight_scale",
        f"must be > 0, got {self.weight_scale}",
      ),
    )


@dataclasses.dataclass(frozen=True)
class TeacherSection:
  """The teacher: `model` (or `checkpoint`) trained by SFT on the oracle data for `steps` steps,
  then its logits divided by `temperature`."""

  model: ModelConfig
  checkpoint: str
  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  schedule: str
  temperature: float = 1.0

  @property
  def sft(self) -> OptimizerSettings:
    """The teacher's SFT optimiser (no weight decay or clipping)."""
    return OptimizerSettings(
      self.learning_rate, self.steps, self.batch_size, self.warmup_steps, self.schedule
    )

  def problems(self) -> list[Problem]:
    return self.sft.problems("teacher") + failed(
      (
        math.isfinite(self.temperature) and self.temperature > 0,
        "teacher.temperature",
        f"must be a finite number > 0, got {self.temperature}",
      )
    )


@dataclasses.dataclass(frozen=True)
class StudentSection:
  """The student: `model` (or `checkpoint`), used as it is (`init = 'scratch'`) or after
  `sft_steps` SFT steps on the oracle data (`'sft'`), then distilled for `steps` steps of
  `batch_size` rows (`micro_batches` accumulated parts each)."""

  model: ModelConfig
  checkpoint: str
  init: str
  sft_steps: int
  steps: int
  batch_size: int
  micro_batches: int
  learning_rate: float
  warmup_steps: int
  schedule: str
  weight_decay: float
  grad_clip: float

  @property
  def sft(self) -> OptimizerSettings | None:
    """The student's initial SFT optimiser (the distillation's learning rate and schedule over
    `sft_steps`), or None for `init = 'scratch'`."""
    if self.init != "sft":
      return None
    return OptimizerSettings(
      self.learning_rate, self.sft_steps, self.batch_size, self.warmup_steps, self.schedule
    )

  @property
  def optimizer(self) -> OptimizerSettings:
    """The distillation optimiser."""
    return OptimizerSettings(
      self.learning_rate,
      self.steps,
      self.batch_size,
      self.warmup_steps,
      self.schedule,
      self.weight_decay,
      self.grad_clip,
    )

  def problems(self) -> list[Problem]:
    """The student's own fields (its optimiser's are `DistillSettings.problems`')."""
    return failed(
      (self.sft_steps >= 0, "student.sft_steps", "must be >= 0"),
      (
        self.init in STUDENT_INITS,
        "student.init",
        f"must be 'scratch' or 'sft', got {self.init!r}",
      ),
    )


@dataclasses.dataclass(frozen=True)
class SamplingSection:
  """How every model samples (`SamplingSettings` with the task's response length)."""

  temperature: float
  top_k: int
  top_p: float

  def settings(self, max_length: int, tokens: SpecialTokens) -> SamplingSettings:
    return SamplingSettings(max_length, self.temperature, self.top_k, self.top_p, tokens)

  def problems(self, max_length: int) -> list[Problem]:
    """The sampling values' problems (read before the task's special tokens are)."""
    return SamplingSettings.value_problems(max_length, self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class OfflineSection:
  """The fixed dataset: N = `num_prompts` prompts x k = `generations_per_prompt` responses,
  regenerated by the teacher on the same prompts every `refresh_every` steps (0: never)."""

  num_prompts: int
  generations_per_prompt: int
  refresh_every: int = 0

  @property
  def size(self) -> int:
    return self.num_prompts * self.generations_per_prompt

  def problems(self) -> list[Problem]:
    n, k, r = self.num_prompts, self.generations_per_prompt, self.refresh_every
    return failed(
      (n > 0, "offline.num_prompts", f"N must be > 0, got {n}"),
      (k > 0, "offline.generations_per_prompt", f"k must be > 0, got {k}"),
      (r >= 0, "offline.refresh_every", f"must be >= 0 steps (0 = never), got {r}"),
    )


@dataclasses.dataclass(frozen=True)
class OnlineSection:
  """The online regimes: where they draw prompts (the offline arm's N, `'offline'`, or the
  pool), how many steps train on each generated batch (`reuse`) and how many steps old the
  parameters that sample the student's part are (`staleness`)."""

  prompts: str
  reuse: int = 1
  staleness: int = 0

  def problems(self) -> list[Problem]:
    return failed(
      (
        self.prompts in ONLINE_PROMPTS,
        "online.prompts",
        f"must be one of {ONLINE_PROMPTS}, got {self.prompts!r}",
      ),
      (self.reuse >= 1, "online.reuse", f"must be >= 1 (1 = fresh every step), got {self.reuse}"),
      (
        self.staleness >= 0,
        "online.staleness",
        f"must be >= 0 steps (0 = fresh), got {self.staleness}",
      ),
    )


@dataclasses.dataclass(frozen=True)
class MixtureSection:
  """The mixture regime's per-example probability of a student sample (GKD's lambda)."""

  student_fraction: float

  def problems(self) -> list[Problem]:
    return failed(
      (
        0.0 <= self.student_fraction <= 1.0,
        "mixture.student_fraction",
        f"must be in [0, 1], got {self.student_fraction}",
      )
    )


@dataclasses.dataclass(frozen=True)
class EvalSection:
  """Evaluation batches of `batch_size` rows; the training-prompt set's `num_train_prompts`."""

  num_train_prompts: int
  batch_size: int

  def problems(self) -> list[Problem]:
    return failed(
      (self.num_train_prompts > 0, "eval.num_train_prompts", "must be > 0"),
      (self.batch_size > 0, "eval.batch_size", "must be > 0"),
    )


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """Devices per mesh axis (-1: the rest); checked against the machine's devices. A run whose
  plan needs more memory per device than a device has stops before compute
  (`planning.preview.check_memory`) unless `ignore_memory_estimate`. `steps_per_dispatch`:
  training steps per call of the compiled program (`training.dispatch`; 0 = 1 on a CPU, else
  chosen from a step's FLOPs). `regimes_at_once`: stage 2's regimes, and stage 1's teacher and
  student SFTs, run side by side, each from a thread of its own (`stages.side_by_side`; 0 = all
  of them on a CPU run of one process, else 1).
  Neither changes a result."""

  data: int
  fsdp: int
  model: int
  ignore_memory_estimate: bool = False
  steps_per_dispatch: int = 0
  regimes_at_once: int = 0

  def regimes_side_by_side(self, regimes: int, platform: str, processes: int) -> int:
    """How many of `regimes` run at once: `regimes_at_once` (> 0; at most `regimes`), or for 0
    all of them on a CPU run of one process and 1 otherwise; always 1 on several processes
    (their collectives must be issued in the same order on every process)."""
    if processes > 1:
      return 1
    chosen = self.regimes_at_once or (regimes if platform == "cpu" else 1)
    return max(1, min(chosen, regimes))

  def problems(self) -> list[Problem]:
    return failed(
      (
        self.steps_per_dispatch >= 0,
        "mesh.steps_per_dispatch",
        "must be >= 0 (0 chooses it: 1 on a CPU, else from a step's FLOPs)",
      ),
      (
        self.regimes_at_once >= 0,
        "mesh.regimes_at_once",
        "must be >= 0 (0 chooses it: every regime at once on a one-process CPU run, else 1)",
      ),
    )


__all__ = [
  "ONLINE_PROMPTS",
  "EvalSection",
  "LossSettings",
  "MeshSection",
  "MixtureSection",
  "OfflineSection",
  "OnlineSection",
  "OracleSection",
  "PromptsSection",
  "SamplingSection",
  "StudentSection",
  "TaskSection",
  "TeacherSection",
  "read_section",
]
