"""The experiment's prompt pools: disjoint sets of prompts for each use.

`prompt_pools` draws them from the task's source: the synthetic task (Zipf prompts, every
position real), a seqio task (`th_distill.data.seqio_tasks`) or the user's prompt file
(`th_distill.data.prompt_files`). The online regimes' share of them is
`th_distill.training.online_sampling.online_prompts`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from th_distill.data import prompts as prompt_lib
from th_distill.data.batch import PromptSet


class PoolsConfig(Protocol):
  """What `prompt_pools` reads of a run's config (a `th_distill.config.RunConfig` is one)."""

  seed: int
  prompts: Any  # num_oracle, num_distill, num_eval
  task: Any  # source, prompt_length, vocab_size, zipf_exponent; a real task's fields


def pool_sizes(config: PoolsConfig) -> dict[str, int]:
  """{'oracle', 'distill', 'eval'}: the number of prompts of each pool."""
  return dict(
    oracle=config.prompts.num_oracle,
    distill=config.prompts.num_distill,
    eval=config.prompts.num_eval,
  )


def prompt_pools(config: PoolsConfig) -> dict[str, PromptSet]:
  """Disjoint prompt pools {'oracle', 'distill', 'eval'}: a `PromptSet` each (tokens [size,
  prompt_length] int32, mask [size, prompt_length] bool) from the task's source."""
  sizes, task = pool_sizes(config), config.task
  if task.source == "seqio":
    from th_distill.data import seqio_tasks  # imports TensorFlow: real tasks only

    return seqio_tasks.prompt_pools(task, sizes)
  if task.source == "prompt_file":
    from th_distill.data import prompt_files

    return prompt_files.prompt_pools(task, sizes)
  pool = prompt_lib.zipf_prompts(
    config.seed, sum(sizes.values()), task.prompt_length, task.vocab_size, task.zipf_exponent
  )
  return {
    name: PromptSet(tokens, np.ones(tokens.shape, bool))
    for name, tokens in prompt_lib.split_pools(pool, sizes).items()
  }
