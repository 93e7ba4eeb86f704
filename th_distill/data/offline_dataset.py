"""The offline regime's fixed dataset: N prompts x k teacher generations, sampled once.

Built from the frozen teacher (stage 2's `frozen_dtype`, the teacher every regime distils
from) into `WORKDIR/offline_dataset.npz` with its record (the config sections it depends on,
`rundir.records.offline_sections`) inside; a rerun reuses it if those sections are unchanged
and refuses it otherwise.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from th_distill.data import regimes
from th_distill.rundir import checkpoints, processes, records
from th_distill.stages.keys import Purpose, key

if TYPE_CHECKING:
  from th_distill.data.sources import SourceContext

PHASE = "offline dataset"  # its progress phase


def load_or_build(context: SourceContext) -> dict[str, np.ndarray]:
  """The dataset (`regimes.build_offline`'s arrays, N*k rows), read back or sampled."""
  config, path = context.config, context.run_dir.offline_dataset
  stage_key = records.StageKey.of(config, records.offline_sections(config))
  if os.path.exists(path):
    data = checkpoints.load_arrays(path)
    stage_key.check_arrays(data, path)
    return data
  phase = context.clock.phase(PHASE)
  data = regimes.build_offline(
    phase.counted(context.programs.host_sampler("teacher"), "samples"),
    context.teacher_params,
    context.pools["distill"][: config.offline.num_prompts],
    config.offline.generations_per_prompt,
    key(config.seed, Purpose.OFFLINE_DATA),
  )
  phase.finish()
  data.update(stage_key.as_arrays())
  processes.write_on_main(lambda: checkpoints.save_arrays(path, data))
  return data
