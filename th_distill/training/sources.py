"""The data regimes by name: the built-in batch sources registered (`BUILT_IN_SOURCES`) and
`source_class(regime)`, the class of a regime a config names. A regime is a
`th_distill.training.batch_source.BatchSource` subclass registered under its name
(`batch_source.register`); adding one is one class and its `register` call (a test registers its
own).

Registered: `offline` (N prompts x k teacher generations built once, replayed for epochs, and
regenerated every `offline.refresh_every` steps if set), `online_teacher` (fresh teacher samples
every step), `online_student` (on-policy student samples), `mixture` (per example, a student
sample with probability `mixture.student_fraction`, else a teacher one: GKD's lambda). The online
ones (`Online`) draw prompts and keys alike (`regimes.online_batches`) and differ in `respond`,
their responses; they train on each sampled batch `online.reuse` times and sample the student's
part with its parameters `online.staleness` steps old (`OnlineSchedule`).
"""

from __future__ import annotations

from th_distill.config.run_config import REGIMES
from th_distill.training.batch_source import BatchSource, register
from th_distill.training.offline_source import Offline
from th_distill.training.online_sources import Mixture, OnlineStudent, OnlineTeacher

# The built-in regimes' sources, registered in this order (`config.run_config.BUILT_IN_REGIMES`).
BUILT_IN_SOURCES = tuple(register(cls) for cls in (Offline, OnlineTeacher, OnlineStudent, Mixture))


def source_class(regime: str) -> type[BatchSource]:
  """The source registered as `regime`; KeyError naming the registered ones."""
  if regime not in REGIMES:
    raise KeyError(f"No batch source {regime!r}; registered: {tuple(REGIMES)}")
  return REGIMES[regime]
