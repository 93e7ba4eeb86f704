"""Stage-2 data regimes' pure batch functions: where each distillation batch comes from.

The regimes themselves are classes (`th_distill.training.sources`: one per regime, its own
sampling included); these are the functions they share:

- `build_offline`: k teacher generations for each of N prompts (the `offline` dataset, the
  training-prompt sets, the report's samples);
- `offline_batches`: a fixed dataset replayed for many epochs in a seed-dependent order that is
  a pure function of the step;
- `online_batches`: fresh responses every step on prompts drawn from a pool, the responses from
  a regime's `Respond` function with the step's `OnlineKeys`.

Every producer is `batch_at(step, student_params) -> Batch` and is deterministic given the seed and
the step, so a run resumed from a checkpoint sees exactly the batches it would have seen. Offline
batches are host (numpy) arrays, to be placed on the devices by the caller
(`Partitioner.shard_batch`); online batches are whatever the sample functions return. Samples
come from `th_distill.sampling.SampleFn`s, whose float32 masks are the `Batch`'s as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from th_distill.data.batch import BATCH_ARRAYS, Batch, PromptSet, TeacherTopK
from th_distill.sampling import SampleFn

# batch_at(step, student_params) -> the distillation batch of `step`.
BatchFn = Callable[[int, Any], Batch]


# Rows sampled per call by `build_offline` (the batch of the oracle and offline-data samplers).
SAMPLE_CHUNK = 1024


def build_offline(
  sample_teacher: SampleFn,
  teacher_params: Any,
  prompts: PromptSet,
  generations_per_prompt: int,
  rng: jax.Array,
  chunk_size: int = SAMPLE_CHUNK,
) -> dict[str, np.ndarray]:
  """Samples k teacher generations for each of the N `prompts` ([N, Li] with their masks).

  Returns numpy arrays `prompts [N*k, Li]`, `prompt_mask [N*k, Li]` (bool), `responses
  [N*k, Lt]`, `mask [N*k, Lt]` (float32, as `sample_teacher` returns it) and `prompt_index
  [N*k]`: row r is generation r % k of prompt `prompt_index[r]` (the k rows of a prompt are
  consecutive). Rows are sampled `chunk_size` at a time, the chunk starting at row `start` with
  key `fold_in(rng, start)`.
  """
  repeated = prompts[np.repeat(np.arange(len(prompts)), generations_per_prompt)]
  responses, masks = [], []
  for start in range(0, len(repeated), chunk_size):
    chunk = repeated[start : start + chunk_size]
    tokens, mask = sample_teacher(
      teacher_params, chunk.tokens, chunk.mask, jax.random.fold_in(rng, start)
    )
    responses.append(np.asarray(tokens))
    masks.append(np.asarray(mask))
  return dict(
    prompts=repeated.tokens,
    prompt_mask=repeated.mask,
    responses=np.concatenate(responses),
    mask=np.concatenate(masks),
    prompt_index=np.repeat(np.arange(len(prompts)), generations_per_prompt),
  )


# The arrays of a dataset that stores the truncated teacher (`TeacherTopK`'s fields; the
# indices in the smallest unsigned type that holds the vocabulary).
TEACHER_TOP = ("top_values", "top_indices", "top_tail")


def _batch(arrays: dict[str, np.ndarray], rows: np.ndarray) -> Batch:
  """Rows `rows` of a dataset as a `Batch` (with its `teacher_top` if it stores one)."""
  top = None
  if "top_values" in arrays:
    top = TeacherTopK(
      values=arrays["top_values"][rows],
      indices=arrays["top_indices"][rows].astype(np.int32),
      tail=arrays["top_tail"][rows],
    )
  return Batch.of_arrays(arrays, rows).replace(teacher_top=top)


def offline_batches(
  dataset: dict[str, np.ndarray], batch_size: int, seed: int, generation: int = 0
) -> BatchFn:
  """Epochs over `dataset` in a fresh permutation each; batch `step` covers stream positions
  [step*B, (step+1)*B) of the concatenated epochs (a batch may straddle two epochs). The
  permutations are seeded by (seed, epoch), and by `generation` too for a refreshed dataset
  (generation > 0: `offline.refresh_every`)."""
  size = len(dataset["prompts"])
  arrays = {k: v for k, v in dataset.items() if k in (*BATCH_ARRAYS, *TEACHER_TOP)}
  entropy = [] if generation == 0 else [generation]

  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, *entropy]).permutation(size)

  def batch_at(step: int, student_params: Any = None) -> Batch:
    del student_params
    positions = step * batch_size + np.arange(batch_size)
    epochs, offsets = positions // size, positions % size
    rows = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      rows[where] = permutation(int(epoch))[offsets[where]]
    return _batch(arrays, rows)

  return batch_at


class OnlineKeys(NamedTuple):
  """The keys of one online step besides its prompt draw's: one per model sampled and one for
  a regime's own choices (the mixture's per-row draw)."""

  teacher: jax.Array
  student: jax.Array
  mixture: jax.Array


# respond(prompts [B, Li], keys, student_params) -> (responses [B, Lt] int32, mask [B, Lt]
# float32): an online regime's responses at one step.
Respond = Callable[[PromptSet, OnlineKeys, Any], tuple[Any, Any]]


def online_batches(
  prompt_pool: PromptSet, batch_size: int, rng: jax.Array, respond: Respond
) -> BatchFn:
  """Fresh responses every step on `batch_size` prompts drawn uniformly (with replacement) from
  the pool ([P, Li]).

  Step t uses `fold_in(rng, t)`, split into (prompt, teacher, student, mixture) keys; the last
  three, as `OnlineKeys`, go to `respond` with the drawn prompts and the student's parameters,
  and its responses and mask are the batch's."""

  def batch_at(step: int, student_params: Any) -> Batch:
    key = jax.random.fold_in(rng, step)
    prompt_key, *keys = jax.random.split(key, 4)
    prompts = prompt_pool[
      np.asarray(jax.random.randint(prompt_key, (batch_size,), 0, len(prompt_pool)))
    ]
    tokens, mask = respond(prompts, OnlineKeys(*keys), student_params)
    return Batch(prompts.tokens, prompts.mask, tokens, mask)

  return batch_at
