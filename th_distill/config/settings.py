"""The settings each compiled program takes: hashable, frozen, derived from the `RunConfig`.

`SamplingSettings` (every sampler), `OptimizerSettings` (an SFT or the distillation's AdamW),
`LossSettings` (the distillation loss; also the config's `loss` section as it is),
`DistillSettings` (the distillation step) and `EvalSettings` (the evaluation schedule). They are
static arguments of the programs (`th_distill.training.programs`), so a program's signature says
what it depends on. Each checks its own values: `problems()` lists `(field, message)` pairs, the
field named as in the config file it is read from (`EvalSettings`'s steps are computed from
checked fields, so it has none).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import optax

from th_distill import sampling_checks
from th_distill.divergences import DIVERGENCES
from th_distill.models.tokens import SpecialTokens
from th_distill.observing.eval_schedule import EvaluationSchedule

# A problem with one setting: (dotted config field, what is wrong and what is allowed).
Problem = tuple[str, str]

# Learning-rate schedules after warm-up (make_optimizer).
SCHEDULES = ("constant", "linear", "cosine")

# What a non-finite training step does: stop the run, or skip the step (keep the parameters).
ON_NONFINITE = ("stop", "skip")

# What a truncated teacher (loss.teacher_top_k > 0) does with the mass outside its top k.
TAILS = ("renormalize", "bucket")

# Dtypes of the frozen teacher and oracle in stage 2.
FROZEN_DTYPES = ("float32", "bfloat16")


# The smallest normal float32: `divergences.jsd` takes a smaller beta as 0.
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def failed(*checks: tuple[bool, str, str]) -> list[Problem]:
  """The (field, message) of each (ok, field, message) check that is not ok."""
  return [(field, message) for ok, field, message in checks if not ok]


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """How every model samples a response: at most `max_length` tokens (task.response_length),
  stopping on `tokens.stop_ids` (the task's special tokens, read from its tokenizer files);
  `temperature` 0 is greedy, `top_k` 0 and `top_p` 1 are off."""

  max_length: int
  temperature: float
  top_k: int
  top_p: float
  tokens: SpecialTokens

  # The config field of each argument (`sampling_checks.settings_problems` checks them).
  FIELDS = {
    "max_length": "task.response_length",
    "temperature": "sampling.temperature",
    "top_k": "sampling.top_k",
    "top_p": "sampling.top_p",
  }

  @classmethod
  def value_problems(
    cls, max_length: int, temperature: float, top_k: int, top_p: float
  ) -> list[Problem]:
    """The problems of these values, named by their config fields (no special tokens needed)."""
    found = sampling_checks.settings_problems(max_length, temperature, top_k, top_p)
    return [(cls.FIELDS[name], message) for name, message in found]

  def problems(self) -> list[Problem]:
    return self.value_problems(self.max_length, self.temperature, self.top_k, self.top_p)

  def arguments(self) -> dict:
    """The keyword arguments of `sampling.generate`."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@functools.cache
def make_optimizer(
  learning_rate: float,
  warmup_steps: int = 0,
  total_steps: int = 0,
  schedule: str = "constant",
  weight_decay: float = 0.0,
  grad_clip: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW with linear warm-up then a constant, linear-decay or cosine schedule.

  `total_steps` is needed by the decaying schedules; `grad_clip` > 0 clips the global norm.
  Cached: equal settings give the same object, so train states built from them share compiled
  steps (the optimiser is static metadata of `TrainState`).
  """
  if schedule == "constant":
    decay = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
  elif schedule == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"Unknown schedule {schedule!r}; expected constant, linear or cosine.")
  lr = (
    optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps]
    )
    if warmup_steps > 0
    else decay
  )
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts.append(optax.adamw(lr, weight_decay=weight_decay))
  return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """AdamW with warm-up and a schedule (`make_optimizer`), over `steps` steps of
  `batch_size` examples."""

  learning_rate: float
  steps: int
  batch_size: int
  warmup_steps: int = 0
  schedule: str = "constant"
  weight_decay: float = 0.0
  grad_clip: float = 0.0

  def problems(self, section: str) -> list[Problem]:
    """Problems of these settings read from `config.<section>` ('teacher' or 'student')."""
    return failed(
      (
        self.learning_rate > 0,
        f"{section}.learning_rate",
        f"must be > 0, got {self.learning_rate}",
      ),
      (self.steps >= 0, f"{section}.steps", f"must be >= 0, got {self.steps}"),
      (self.warmup_steps >= 0, f"{section}.warmup_steps", "must be >= 0"),
      (self.batch_size > 0, f"{section}.batch_size", "must be > 0"),
      (
        self.schedule in SCHEDULES,
        f"{section}.schedule",
        f"must be constant, linear or cosine, got {self.schedule!r}",
      ),
      (
        self.weight_decay >= 0,
        f"{section}.weight_decay",
        f"must be >= 0 (0 = off), got {self.weight_decay}",
      ),
      (
        self.grad_clip >= 0,
        f"{section}.grad_clip",
        f"must be >= 0 (0 = off), got {self.grad_clip}",
      ),
    )

  def build(self) -> optax.GradientTransformation:
    return make_optimizer(
      self.learning_rate,
      self.warmup_steps,
      self.steps,
      self.schedule,
      self.weight_decay,
      self.grad_clip,
    )


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The distillation loss D(teacher, student) per token (`th_distill.divergences`): `name` of
  fkl / rkl / jsd, `beta` and `normalized` for jsd, logits divided by `temperature`; with
  `teacher_top_k` K > 0 the teacher is truncated to its top K log-probabilities per position and
  `tail` says what becomes of the rest (`divergences.truncated_divergence`). The vocabulary
  bound on K is `RunConfig.problems`'."""

  name: str
  beta: float
  normalized: bool
  temperature: float
  teacher_top_k: int = 0
  tail: str = "renormalize"

  def problems(self) -> list[Problem]:
    return failed(
      (self.name in DIVERGENCES, "loss.name", f"{self.name!r} is not one of {tuple(DIVERGENCES)}"),
      (0.0 <= self.beta <= 1.0, "loss.beta", f"must be in [0, 1], got {self.beta}"),
      (self.temperature > 0, "loss.temperature", f"must be > 0, got {self.temperature}"),
      (
        self.teacher_top_k >= 0,
        "loss.teacher_top_k",
        f"must be >= 0 (0 = the full vocabulary), got {self.teacher_top_k}",
      ),
      (self.tail in TAILS, "loss.tail", f"must be one of {TAILS}, got {self.tail!r}"),
      (
        self.name != "jsd" or self.normalized or _FLOAT32_TINY <= self.beta < 1.0,
        "loss.beta",
        f"{self.beta} with loss.name = 'jsd' and loss.normalized = False makes the loss 0 for "
        "every student (JSD_beta vanishes at beta = 0 and 1): nothing would train; use "
        "0 < beta < 1, loss.normalized = True (fkl at 0, rkl at 1) or loss.name = 'fkl'/'rkl'",
      ),
      (
        (self.teacher_top_k, self.tail) != (1, "renormalize"),
        "loss.teacher_top_k",
        "1 with loss.tail = 'renormalize' leaves one class of probability 1 on both sides: the "
        "loss is 0 and the student never moves; use K >= 2 or loss.tail = 'bucket'",
      ),
    )


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """The distillation step: its loss and optimiser, gradient accumulation over `micro_batches`,
  logits in `sequence_chunks` chunks of the response, what a non-finite step does
  (`on_nonfinite` 'stop' or 'skip') and the frozen models' dtype in stage 2. `optimizer` is None
  where the optimiser is given as an optax transformation (`training.distiller.Distiller`)."""

  loss: LossSettings
  optimizer: OptimizerSettings | None
  micro_batches: int
  sequence_chunks: int
  on_nonfinite: str
  frozen_dtype: str

  def problems(self) -> list[Problem]:
    """Problems of the loss, the student's optimiser and the step's own settings
    (`sequence_chunks` must divide the response: `config.check_fields` checks it)."""
    return (
      self.loss.problems()
      + (self.optimizer.problems("student") if self.optimizer is not None else [])
      + failed(
        (self.micro_batches > 0, "student.micro_batches", "must be > 0"),
        (
          self.on_nonfinite in ON_NONFINITE,
          "on_nonfinite",
          f"must be one of {ON_NONFINITE}, got {self.on_nonfinite!r}",
        ),
        (
          self.frozen_dtype in FROZEN_DTYPES,
          "frozen_dtype",
          f"must be 'float32' or 'bfloat16', got {self.frozen_dtype!r}",
        ),
      )
    )


@dataclasses.dataclass(frozen=True)
class ProgramSettings:
  """All a run's compiled programs take from its config (`training.programs.Programs`): the
  samplers' settings, the distillation step's (its loss, chunks and frozen dtype), the task's
  lengths and vocabulary size, the evaluator's rows per call (`eval_batch_size`, before a
  memory layout splits them further) and the configured steps per dispatch (0: chosen from a
  step's FLOPs, `training.dispatch.steps_per_dispatch`)."""

  sampling: SamplingSettings
  distill: DistillSettings
  prompt_length: int
  response_length: int
  vocab_size: int
  eval_batch_size: int
  steps_per_dispatch: int


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Evaluation on the fixed sets: at `steps` (computed on demand, in order), `batch_size` rows
  at a time, with the training-prompt set of `num_train_prompts` prompts."""

  steps: EvaluationSchedule
  batch_size: int
  num_train_prompts: int
