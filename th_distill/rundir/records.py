"""What the stages leave in the workdir, and when they may reuse it.

Each stage depends on named config sections only (`stage1_sections`, `offline_sections`,
`regime_sections`; dotted paths) and records them in its marker with their hash
(`StageKey`): a rerun reuses a finished stage whose sections are unchanged and refuses one
whose sections changed (`resume.ConfigChanged`, listing old -> new values). Fields that change no
result (`resume.FREE_FIELDS`: the regimes to run, the mesh, the report's threshold, what a
non-finite step does) are in no stage's sections.

Layout: `WORKDIR/stage1/` (or a study's shared stage-1 directory; marker `info.json`),
`WORKDIR/offline_dataset.npz` (its record inside), `WORKDIR/<regime>/` (markers `started.json`
and `done.json`, `metrics.jsonl`, `checkpoints/`).

Multi-host: process 0 alone writes files (`write_on_main`); every process takes part in
checkpoints. Pre-emption (`PreemptionWatch`) stops every process at the same step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from th_distill.errors import EX_TEMPFAIL, RunError
from th_distill.partitioning import is_main_process
from th_distill.rundir import checkpoints, resume

# Stage 1's sections: the oracle, its data, the teacher's SFT, the student's initialisation and
# the shared sampling settings (the eval sets are sampled in stage 1).
STAGE1_SECTIONS = (
  "seed",
  "task",
  "prompts",
  "oracle",
  "teacher",
  "student.model",
  "student.checkpoint",
  "student.init",
  "student.sft_steps",
  "sampling",
)
# The student's SFT optimiser fields, when stage 1 trains the student (`student.init = 'sft'`).
STUDENT_SFT_SECTIONS = (
  "student.learning_rate",
  "student.warmup_steps",
  "student.schedule",
  "student.batch_size",
)


def stage1_sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config sections stage 1's results depend on."""
  if config.student.init == "sft":
    return STAGE1_SECTIONS + STUDENT_SFT_SECTIONS
  return STAGE1_SECTIONS


def offline_sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The sections of the offline dataset: stage 1's (its teacher) and `offline` (N and k)."""
  return stage1_sections(config) + ("offline",)


def regime_sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The sections of a distillation run: every top-level section but `resume.FREE_FIELDS`."""
  return tuple(k for k in config.keys() if k not in resume.FREE_FIELDS)


def fingerprint_fields(
  config: ml_collections.ConfigDict, sections: tuple[str, ...]
) -> dict[str, Any]:
  """{section: value} of the named config sections (dotted paths)."""

  def lookup(path):
    value = config
    for part in path.split("."):
      value = value[part]
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value

  return {s: lookup(s) for s in sections}


def fingerprint(config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> str:
  """Hash (16 hex digits) of the named config sections."""
  text = json.dumps(fingerprint_fields(config, sections), sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class StageKey:
  """A stage's dependence on the config: its sections' values and their hash."""

  fingerprint: str
  fields: dict[str, Any]

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> StageKey:
    return cls(fingerprint(config, sections), fingerprint_fields(config, sections))

  def record(self) -> dict[str, Any]:
    """The marker's part that `check` reads back."""
    return {"fingerprint": self.fingerprint, "fields": self.fields}

  def check(self, marker: str) -> None:
    """Raises resume.ConfigChanged if `marker` was written for other section values."""
    resume.check_marker(marker, self.fingerprint, self.fields)

  def as_arrays(self) -> dict[str, np.ndarray]:
    """The record as arrays, to store beside a stage's arrays (`check_arrays` reads it)."""
    return {
      "fingerprint": np.asarray(self.fingerprint),
      "fields": np.asarray(json.dumps(self.fields, default=list)),
    }

  def check_arrays(self, arrays: dict[str, np.ndarray], path: str) -> None:
    """`check` for a stage stored as arrays in `path` (e.g. the offline dataset)."""
    record: dict[str, Any] = {"fingerprint": str(arrays["fingerprint"])}
    if "fields" in arrays:
      record["fields"] = json.loads(str(arrays["fields"]))
    resume.check_record(record, self.fingerprint, self.fields, path)


def write_on_main(write: Callable[[], None]) -> None:
  """Runs `write` on process 0 only, then waits until every process gets there (so nobody reads
  a file before it exists)."""
  if is_main_process():
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("th_distill_write")


def exists_on_main(path: str) -> bool:
  """Whether `path` exists as process 0 sees it: every process gets the same answer, so all take
  the same branch (and enter the same collectives) even while process 0 is writing the file."""
  exists = os.path.exists(path)
  if jax.process_count() > 1:
    exists = bool(multihost_utils.broadcast_one_to_all(np.asarray(exists)))
  return exists


def write_marker(path: str, record: dict[str, Any]) -> None:
  """Writes the JSON marker `path` (atomically), creating its directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  checkpoints.write_json(path, record)


def regime_dir(workdir: str, regime: str) -> str:
  return os.path.join(workdir, regime)


class Preempted(RunError):
  """A run stopped for pre-emption after checkpointing at `step`; running the same command
  again resumes it (exit status 75, EX_TEMPFAIL: schedulers retry it)."""

  exit_code = EX_TEMPFAIL

  def __init__(self, regime: str, step: int):
    super().__init__(
      f"{regime}: pre-empted (SIGTERM); checkpointed at step {step}. Run the same "
      "command again to resume."
    )
    self.step = step


class PreemptionWatch:
  """Tells the training loop when to checkpoint and stop for pre-emption, at the same step on
  every process (`with PreemptionWatch() as watch: ... watch.reached(step)`).

  Several processes (`jax.distributed`): JAX's pre-emption service, whose coordination agent
  learns of a SIGTERM sent to any process and agrees on a step every process then reaches
  (`multihost_utils.reached_preemption_sync_point`; nothing is exchanged on other steps). Every
  process must call `reached` at every step of the loop. One process: SIGTERM is recorded
  instead of killing the process, while the watch is active.
  """

  def __init__(self):
    self._sigterm = False
    self._previous: Any = None
    self._service = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if not self._service:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM received: checkpointing after this step.")
    self._sigterm = True

  def reached(self, step: int) -> bool:
    """Whether to checkpoint at `step` and stop."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._sigterm

  def __exit__(self, *exc) -> None:
    if not self._service:
      signal.signal(signal.SIGTERM, self._previous)
