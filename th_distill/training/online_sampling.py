"""The online regimes' sampling: the prompts they draw from (`online_prompts`), a regime's fresh
batch of a step (`fresh_batches`) and the responses each model samples (`teacher_responses`,
`student_responses`, `mixture_responses`); `th_distill.training.online_sources` holds the
regimes, `BatchSource.refresh` switches any regime to fresh teacher batches."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from th_distill.data import regimes
from th_distill.data.batch import PromptSet
from th_distill.training.keys import Purpose, key
from th_distill.training.source_context import SourceContext

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig

# respond(context, prompts [B, Li], keys, student_params) -> (responses [B, Lt] int32, mask
# [B, Lt] float32): an online regime's responses at one step, sampled with that step's keys.
ContextRespond = Callable[[SourceContext, PromptSet, regimes.OnlineKeys, Any], tuple[Any, Any]]


def online_prompts(config: RunConfig, distill_prompts: PromptSet) -> PromptSet:
  """The prompts (P rows) the online regimes draw from, of the distillation pool: the offline
  arm's N prompts (`online.prompts = 'offline'`, so only the responses differ between the arms)
  or the whole pool (`'pool'`)."""
  return distill_prompts[: config.online_prompt_count()]


def fresh_batches(context: SourceContext, respond: ContextRespond) -> regimes.BatchFn:
  """`sample(step, student_params) -> Batch`: a fresh batch with the key of `step`
  (`regimes.online_batches` on `online_prompts`, with `respond`'s responses)."""
  config = context.config
  return regimes.online_batches(
    online_prompts(config, context.prompts),
    config.student.batch_size,
    key(config.seed, Purpose.ONLINE),
    functools.partial(respond, context),
  )


def teacher_responses(
  context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
) -> tuple[Any, Any]:
  """The frozen teacher's samples on `prompts` with `keys.teacher` (a `ContextRespond`)."""
  del student_params
  return context.teacher_samples(prompts, keys.teacher)


def student_responses(
  context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
) -> tuple[Any, Any]:
  """The student's samples (with `student_params`) on `prompts` with `keys.student`."""
  return context.student_samples(student_params, prompts, keys.student)


def mixture_responses(
  context: SourceContext, prompts: PromptSet, keys: regimes.OnlineKeys, student_params: Any
) -> tuple[Any, Any]:
  """Per example, the student's sample with probability `mixture.student_fraction`, else the
  teacher's (both sampled on the same prompts, each with its own key; the choice with
  `keys.mixture`)."""
  teacher = teacher_responses(context, prompts, keys, student_params)
  student = student_responses(context, prompts, keys, student_params)
  fraction = context.config.mixture.student_fraction
  use_student = jax.random.bernoulli(keys.mixture, fraction, (len(prompts), 1))
  return tuple(jnp.where(use_student, s, t) for s, t in zip(student, teacher, strict=True))
