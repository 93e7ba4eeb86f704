"""The offline regime's dataset: N prompts x k teacher generations, and its refreshed versions.

Generation 0 is sampled once from the frozen teacher (stage 2's `frozen_dtype`, the teacher
every regime distils from) into `WORKDIR/offline_dataset.npz` with its record (the config
sections it depends on, `rundir.records.offline_sections`) inside; a rerun reuses it if those
sections are unchanged and refuses it otherwise. With `offline.refresh_every` R > 0, generation
g (steps [gR, (g+1)R)) is sampled afresh on the same prompts with the key
`fold_in(OFFLINE_DATA key, g)`; it is a pure function of the seed and g, so a resumed run samples
it again rather than reading it from disk. With `loss.teacher_top_k` K > 0 every generation also
stores the teacher's top-K log-probabilities at each response position (`TEACHER_TOP`): the
truncated supervision the loss reads instead of the teacher's logits.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import jax
import numpy as np

from th_distill.data import regimes
from th_distill.rundir import checkpoints, processes, records
from th_distill.rundir.preemption import stopping_between_calls
from th_distill.training.keys import Purpose, key

if TYPE_CHECKING:
  from th_distill.sampling import SampleFn
  from th_distill.training.source_context import SourceContext

PHASE = "offline dataset"  # its progress phase
# Regimes side by side (`stages.stage2`) may ask for it at once: the first samples it, the
# others wait and read it back.
_BUILDING = threading.Lock()


def load_or_build(context: SourceContext) -> dict[str, np.ndarray]:
  """Generation 0 (`regimes.build_offline`'s arrays, N*k rows, and the stored truncated
  teacher if any), read back or sampled (once, whichever threads ask)."""
  with _BUILDING:
    return _load_or_build(context)


def _load_or_build(context: SourceContext) -> dict[str, np.ndarray]:
  config, path = context.config, context.run_dir.offline_dataset
  stage_key = records.StageKey.of(config, records.offline_sections(config))
  data = checkpoints.readable_arrays(path, "the offline dataset")  # damaged: set aside, rebuilt
  if data is not None:
    stage_key.check_arrays(data, path)
    return data
  phase = context.clock.phase(PHASE)
  teacher = context.programs.host_sampler("teacher")
  data = sample(context, stopping_between_calls(phase.counted(teacher, "samples"), phase.title), 0)
  phase.finish()
  data.update(stage_key.as_arrays())
  processes.write_on_main(lambda: checkpoints.save_arrays(path, data))
  return data


def sample(
  context: SourceContext, sample_teacher: SampleFn, generation: int
) -> dict[str, np.ndarray]:
  """Generation `generation` of the dataset, sampled by `sample_teacher` (N*k rows)."""
  config = context.config
  rng = key(config.seed, Purpose.OFFLINE_DATA)
  data = regimes.build_offline(
    sample_teacher,
    context.teacher_params,
    context.prompts[: config.offline.num_prompts],
    config.offline.generations_per_prompt,
    rng if generation == 0 else jax.random.fold_in(rng, generation),
  )
  if config.loss.teacher_top_k:
    data.update(context.programs.teacher_top()(context.teacher_params, data))
  return data
