"""The samplers' argument checks, apart from the jitted loop (`th_distill.sampling`): their
settings (`settings_problems`, which the config's `SamplingSettings.problems` shares) and the
shapes and special tokens they are given (`check_arguments`)."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np

from th_distill.models.tokens import SpecialTokens

# The smallest normal float32: a smaller positive temperature flushes to 0 on accelerators.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)


def settings_problems(
  max_length: Any, temperature: Any, top_k: Any, top_p: Any
) -> list[tuple[str, str]]:
  """(argument, what is wrong) of each invalid sampling setting; [] if all are valid (the
  config's `SamplingSettings.problems` names them by their config fields)."""
  checks = (
    (
      isinstance(max_length, numbers.Integral) and max_length > 0,
      "max_length",
      f"must be a positive int, got {max_length!r}",
    ),
    (
      isinstance(temperature, numbers.Real)
      and (temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf")),  # no NaN
      "temperature",
      f"must be 0 (greedy) or finite and >= {MIN_TEMPERATURE:.3g}, got {temperature!r}",
    ),
    (
      isinstance(top_k, numbers.Integral) and top_k >= 0,
      "top_k",
      f"must be an int >= 0 (0 = off), got {top_k!r}",
    ),
    (
      isinstance(top_p, numbers.Real) and 0.0 < top_p <= 1.0,
      "top_p",
      f"must be in (0, 1] (1 = off), got {top_p!r}",
    ),
  )
  return [(name, message) for ok, name, message in checks if not ok]


def check_arguments(
  prompts: jax.Array,
  prompt_mask: jax.Array,
  max_length: int,
  temperature: float,
  top_k: int,
  top_p: float,
  tokens: SpecialTokens,
) -> None:
  """Raises a one-line ValueError naming the first invalid argument of a sampler: `prompts` not
  [B, Li] with Li > 0, `prompt_mask` not of its shape, a setting `settings_problems` refuses, or
  `tokens` not a `SpecialTokens`."""
  if prompts.ndim != 2 or prompts.shape[1] == 0:
    raise ValueError(f"prompts must be [B, Li] with Li > 0, got shape {prompts.shape}.")
  if prompt_mask.shape != prompts.shape:
    raise ValueError(
      f"prompt_mask must have the prompts' shape {prompts.shape}, got {prompt_mask.shape}."
    )
  for name, message in settings_problems(max_length, temperature, top_k, top_p):
    raise ValueError(f"{name} {message}.")
  if not isinstance(tokens, SpecialTokens):
    raise ValueError(
      f"tokens must be the model's th_distill.models.tokens.SpecialTokens, got {tokens!r}."
    )
