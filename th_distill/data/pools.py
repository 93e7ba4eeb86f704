"""The experiment's prompt pools: disjoint sets of prompts for each use.

`prompt_pools` draws them from the synthetic task or a real one (the online regimes' share of
them is `data.sources.online_prompts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from th_distill.data import prompts as prompt_lib
from th_distill.data.batch import PromptSet

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig


def prompt_pools(config: RunConfig) -> dict[str, PromptSet]:
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
  pools = prompt_lib.split_pools(pool, sizes)
  return {name: PromptSet(p, np.ones(p.shape, bool)) for name, p in pools.items()}
