"""The experiment's prompt pools: disjoint sets of prompts for each use.

`prompt_pools` draws them from the synthetic task or a real one; `online_prompts` says which of
them the online regimes sample on.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from th_distill.data import prompts as prompt_lib


def prompt_pools(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
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


def online_prompts(config: ml_collections.ConfigDict, pools: dict[str, np.ndarray]) -> np.ndarray:
  """The prompts [P, Li] the online regimes draw from: the offline arm's N prompts
  (`online.prompts = 'offline'`, so only the responses differ between the arms) or the whole
  distillation pool (`'pool'`)."""
  if config.online.prompts == "offline":
    return pools["distill"][: config.offline.num_prompts]
  return pools["distill"]
