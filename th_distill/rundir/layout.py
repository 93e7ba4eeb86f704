"""The run directory: every path a run reads or writes, and whether its results may be reused.

  WORKDIR/
    config.json            the config the run was started with (`RunDirectory.check_config`)
    stage1/                stage 1 (or a study's shared directory): `Stage1Directory`
    offline_dataset.npz    the N x k teacher dataset, its record inside
    <regime>/              one per regime: `RegimeDirectory`
    summary.json, report.md, *.png   the report

Every file is written atomically (th_distill.rundir.checkpoints) and a stage is finished when its
marker exists (written last), so a run killed at any moment leaves a directory the next run
resumes. Multi-host: process 0 writes files (th_distill.rundir.processes); every process takes
part in checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from th_distill import boundary
from th_distill.config.defaults import base_config
from th_distill.observing import metrics_io
from th_distill.rundir import checkpoints, records

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig
  from th_distill.observing.eval_schedule import EvaluationSchedule

# Held-out prompts whose final student samples a regime keeps for the report (`samples.npz`).
REPORT_SAMPLE_ROWS = 3

# Stage 1's parameters: {item of the composite checkpoint: model}.
STAGE1_PARAMS = {"oracle": "oracle", "teacher": "teacher", "student_init": "student"}


@dataclasses.dataclass(frozen=True)
class Stage1Directory:
  """Stage 1's results: the marker `info.json` (oracle calibration, SFT losses, the teacher's
  golden distances), the parameters (one Orbax composite checkpoint of `STAGE1_PARAMS`), the
  oracle data, the fixed evaluation sets and, while they run, the SFTs' checkpoints."""

  path: str

  @property
  def marker(self) -> str:
    return os.path.join(self.path, "info.json")

  @property
  def params(self) -> str:
    return os.path.join(self.path, "params")

  @property
  def oracle_data(self) -> str:
    return os.path.join(self.path, "oracle_data.npz")

  def eval_set(self, source: str) -> str:
    """The held-out samples of 'oracle' or 'teacher'."""
    return os.path.join(self.path, f"eval_{source}.npz")

  @property
  def started_marker(self) -> str:
    """The config record an unfinished stage 1 resumes under."""
    return os.path.join(self.path, "started.json")

  def write_started(self, record: dict) -> None:
    boundary.make_dirs(self.path)
    checkpoints.write_json(self.started_marker, record)

  @property
  def sft_checkpoints_root(self) -> str:
    return os.path.join(self.path, "sft")

  def sft_checkpoints(self, model: str) -> str:
    """The checkpoints of `model`'s SFT while it runs (removed when stage 1 is finished)."""
    return os.path.join(self.sft_checkpoints_root, model)

  @property
  def finished(self) -> bool:
    return os.path.exists(self.marker)

  def read_marker(self) -> dict:
    """The marker's record; DamagedFile if it cannot be read (it holds results: not rebuilt)."""
    try:
      record = checkpoints.read_json(self.marker)
      if not isinstance(record, dict) or "fingerprint" not in record:
        raise ValueError("not a stage-1 record")
    except (OSError, ValueError) as e:
      raise checkpoints.damaged(
        self.marker,
        "stage 1's record: the oracle's calibration, the SFT losses, the teacher's golden "
        "distances",
        e,
        "delete it to run stage 1 again (its results are a function of the seed)",
      ) from e
    return record

  def set_aside_damaged_record(self) -> None:
    """Sets aside a `started.json` that cannot be read (`checkpoints.readable_json`)."""
    checkpoints.readable_json(self.started_marker, "the config record of an unfinished stage 1")


@dataclasses.dataclass(frozen=True)
class RegimeDirectory:
  """One distillation run: markers `started.json` (the config it started with) and `done.json`,
  `metrics.jsonl` and TensorBoard events, `checkpoints/`, the parameters the hacking
  detector keeps (`kept(name)`: `best_golden/`, `best_predicted/`, `candidates/`) and the final
  student's samples on the first held-out prompts (`samples.npz`, for the report)."""

  path: str
  regime: str

  @property
  def started_marker(self) -> str:
    return os.path.join(self.path, "started.json")

  @property
  def done_marker(self) -> str:
    return os.path.join(self.path, "done.json")

  @property
  def metrics(self) -> str:
    return os.path.join(self.path, metrics_io.METRICS_FILE)

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def samples(self) -> str:
    return os.path.join(self.path, "samples.npz")

  def kept(self, name: str) -> str:
    """Kept parameters `name` (a folder; its record is `<name>.json` beside it)."""
    return os.path.join(self.path, name)

  @property
  def finished(self) -> bool:
    return os.path.exists(self.done_marker)

  def done_record(self) -> dict:
    return checkpoints.read_json(self.done_marker)

  def check_rows(self, schedule: EvaluationSchedule) -> None:
    """Raises MetricsLost if this finished regime's `metrics.jsonl` lacks the row of an
    evaluation step of `schedule` it ran (up to `done.json`'s `steps`)."""
    metrics_io.check_rows(
      self.metrics,
      schedule.upto(self.done_record()["steps"]),
      f"delete {self.path} to run the regime again",
    )

  def set_aside_damaged_markers(self) -> None:
    """Sets aside a `started.json` or `done.json` that cannot be read; both are written again:
    the first from the config, the second by resuming the regime from its last checkpoint."""
    checkpoints.readable_json(self.started_marker, f"the config record of the {self.regime} run")
    checkpoints.readable_json(self.done_marker, f"the marker of the finished {self.regime} run")

  def write_started(self, record: dict) -> None:
    """Writes `started.json` (the config record the run resumes under), creating the folder."""
    boundary.make_dirs(self.path)
    checkpoints.write_json(self.started_marker, record)


@dataclasses.dataclass(frozen=True)
class RunDirectory:
  """One experiment's directory (`WORKDIR`); `stage1_path` defaults to `WORKDIR/stage1`."""

  path: str
  stage1_path: str | None = None

  @property
  def stage1(self) -> Stage1Directory:
    return Stage1Directory(self.stage1_path or os.path.join(self.path, "stage1"))

  @property
  def config(self) -> str:
    return os.path.join(self.path, "config.json")

  @property
  def offline_dataset(self) -> str:
    return os.path.join(self.path, "offline_dataset.npz")

  @property
  def summary(self) -> str:
    return os.path.join(self.path, "summary.json")

  @property
  def report(self) -> str:
    return os.path.join(self.path, "report.md")

  def regime(self, regime: str) -> RegimeDirectory:
    return RegimeDirectory(os.path.join(self.path, regime), regime)

  def holds_results(self, regimes: tuple[str, ...]) -> bool:
    """Whether any result is here: stage 1, the offline dataset or one of `regimes`' folders."""
    return (
      self.stage1.finished
      or os.path.exists(self.offline_dataset)
      or any(os.path.isdir(self.regime(r).path) for r in regimes)
    )

  def check_config(self, config: RunConfig, regimes: tuple[str, ...]) -> None:
    """Raises records.ConfigChanged if this directory holds results (of any of `regimes`) of a
    config (its `config.json`) that differs from `config` in a field other than
    `records.FREE_FIELDS`; a field its config.json lacks counts as at its `base_config()` default
    (a field added since: a workdir of an earlier version resumes). Call before `write_config`."""
    if not self.holds_results(regimes):
      return
    recorded = checkpoints.readable_json(self.config, "the config the workdir was started with")
    if recorded is None:  # absent, or damaged and set aside: `write_config` writes it again
      return
    diff = records.changes(
      recorded, records.as_recorded(config.values), records.as_recorded(base_config().to_dict())
    )
    if diff:
      raise records.refusal(f"--workdir={self.path}", diff)

  def write_config(self, config: RunConfig) -> None:
    os.makedirs(self.path, exist_ok=True)  # the workdir: the user names it, a link or not
    checkpoints.write_json(self.config, config.values)
