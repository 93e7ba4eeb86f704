"""The experiment's prompt pools: disjoint sets of prompts for each use.

`prompt_pools` draws them from the synthetic task or a real one (the online regimes' share of
them is `training.sources.online_prompts`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from th_distill.data import prompts as prompt_lib


class PoolsConfig(Protocol):
  """What `prompt_pools` reads of a run's config (a `th_distill.config.RunConfig` is one)."""

  seed: int
  prompts: Any  # num_oracle, num_distill, num_eval
  task: Any  # source, prompt_length, vocab_size, zipf_exponent; a real task's fields


def prompt_pools(config: PoolsConfig) -> dict[str, np.ndarray]:
  """Disjoint prompt pools {'oracle', 'distill', 'eval'}: [size, prompt_length] int32 each, from
  the synthetic task or a real one (`task.source = 'seqio'`, zero-padded)."""
  sizes = dict(
    oracle=config.prompts.num_oracle,
    distill=config.prompts.num_distill,
    eval=config.prompts.num_eval,
  )
  task = config.task
  if task.source == "seqio":
    from th_distill.data import seqio_tasks  # imports TensorFlow: real tasks only

    return seqio_tasks.prompt_pools(task, sizes)
  pool = prompt_lib.zipf_prompts(
    config.seed, sum(sizes.values()), task.prompt_length, task.vocab_size, task.zipf_exponent
  )
  return prompt_lib.split_pools(pool, sizes)
