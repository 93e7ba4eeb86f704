"""`Batch`: the unit every producer of stage-2 data returns and every step consumes.

Shapes: B rows, Li prompt length, Lt response length. Which positions are real is carried by
masks, never by a token id: `prompt_mask` is bool (True on real prompt tokens, anywhere in the
row), `mask` float32 (1.0 on the real response tokens, EOS included; 0.0 after), the dtype of
`sampling.SampleOutput.mask`, so that masked sums and means need no conversion. Padded positions
hold the vocabulary's pad id (`th_distill.models.tokens.SpecialTokens.pad_id`), a filler that may
be an ordinary token.

`PromptSet` is a host-side set of prompts with their masks: what the prompt pools, the offline
dataset and the evaluation sets hold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class TeacherTopK:
  """The teacher truncated to its K most probable tokens at each response position
  (`divergences.top_k_log_probs` at the loss temperature): what an offline dataset of top-k
  teacher logits stores."""

  values: jax.Array  # [B, Lt, K] float32 log-probabilities, descending
  indices: jax.Array  # [B, Lt, K] int32 token ids
  tail: jax.Array  # [B, Lt] float32 log of the probability outside the K (-inf if none)


# The arrays of a `Batch` (without the truncated teacher), as a host data set stores them.
BATCH_ARRAYS = ("prompts", "prompt_mask", "responses", "mask")


@flax.struct.dataclass
class Batch:
  """Prompts, responses and their mask, and the stored truncated teacher where the data carries
  one (else None: the step computes what it needs from the teacher); a pytree (every array is a
  leaf)."""

  prompts: jax.Array  # [B, Li] int32 (the pad id where prompt_mask is False)
  prompt_mask: jax.Array  # [B, Li] bool, True on real prompt tokens
  responses: jax.Array  # [B, Lt] int32 (the pad id after the EOS)
  mask: jax.Array  # [B, Lt] float32, 1.0 on real response tokens (EOS included)
  teacher_top: TeacherTopK | None = None

  @classmethod
  def of_arrays(cls, arrays: dict[str, Any], rows: Any = slice(None)) -> Batch:
    """Rows `rows` of a data set of `BATCH_ARRAYS` (host or device arrays) as a `Batch`."""
    return cls(*(arrays[name][rows] for name in BATCH_ARRAYS))

  @property
  def num_tokens(self) -> jax.Array:
    """[] float32: the real response tokens of the batch."""
    return jnp.sum(self.mask)


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """Prompts on the host: `tokens` [N, Li] int32 and `mask` [N, Li] bool (True = a real token).
  Indexing or slicing takes rows: `prompts[:8]`, `prompts[np.array([3, 1])]`."""

  tokens: np.ndarray
  mask: np.ndarray

  def __post_init__(self):
    if self.tokens.ndim != 2 or self.tokens.shape != self.mask.shape:
      raise ValueError(
        f"PromptSet: tokens {self.tokens.shape} and mask {self.mask.shape} must be one [N, Li]."
      )

  @classmethod
  def of_rows(cls, rows: list[list[int]], length: int, pad_id: int) -> PromptSet:
    """Rows of ids (each at most `length`), right-padded with `pad_id` to [N, length]."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
      tokens[i, : len(row)], mask[i, : len(row)] = row, True
    return cls(tokens, mask)

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def shape(self) -> tuple[int, int]:
    """(N, Li)."""
    return self.tokens.shape

  def __getitem__(self, rows: Any) -> PromptSet:
    return PromptSet(self.tokens[rows], self.mask[rows])
