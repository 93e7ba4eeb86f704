"""What a batch source (`th_distill.training.sources`) is built from: `SourceContext`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig
  from th_distill.data.batch import PromptSet
  from th_distill.observing.progress import Phase, RunClock
  from th_distill.rundir.layout import RunDirectory
  from th_distill.training.programs import Programs


@dataclasses.dataclass
class SourceContext:
  """What a source may use: the run's config and programs, the frozen teacher's parameters, the
  prompt pools ({'oracle', 'distill', 'eval'}: `PromptSet`s), the run directory (for data it
  caches), the run's clock (phases of its own) and the regime's progress phase (to count the
  work it does)."""

  config: RunConfig
  programs: Programs
  teacher_params: Any
  pools: dict[str, PromptSet]
  run_dir: RunDirectory
  clock: RunClock
  phase: Phase
