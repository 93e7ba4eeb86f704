"""Metric logging: one JSON object per logged step in `metrics.jsonl`, plus TensorBoard events.

Each line of `metrics.jsonl` holds `step` and metric names (docs/metrics.md), as strict JSON: a
non-finite value is written `null` and read back as NaN. Lines are flushed as they are written,
so a killed run loses at most the line being written; `MetricsWriter` drops a torn last line and
every line past the step a resumed run restarts from, so the file always reads as one
uninterrupted run. A file deleted or replaced under a running writer is written back whole
from the writer's rows, with a warning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from th_distill import boundary
from th_distill.errors import RunError
from th_distill.observing import metric_names

# The headline curve names, for readers of `metrics.jsonl` (docs/detection.md, the notebooks);
# every name is defined in `th_distill.observing.metric_names`.
GOLDEN, PROXY, TRAIN_PROXY = metric_names.GOLDEN, metric_names.PROXY, metric_names.TRAIN_PROXY

_NONFINITE = ("nan", "inf", "-inf")  # how files written before `null` hold non-finite values

METRICS_FILE = "metrics.jsonl"  # a run directory's metric rows, one JSON object per line


class MetricsLost(RunError):
  """A run's `metrics.jsonl` lacks rows it logged (deleted or cut short)."""


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The complete JSON rows of `path` (`null` and the 'nan' / 'inf' strings of older files read
  as float NaN / inf); [] if it does not exist. A torn last line is ignored; a damaged line
  before it is left out with a warning naming it (`check_rows` then counts its row missing)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.readlines()
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
      if number < len(lines):
        logging.warning("%s: line %d is not a metrics row (damaged); left out.", path, number)
      continue
    rows.append(
      {k: float("nan") if v is None else float(v) if v in _NONFINITE else v for k, v in row.items()}
    )
  return rows


def missing_steps(path: str, steps: Iterable[int]) -> list[int]:
  """The steps of `steps` whose row `metrics.jsonl` at `path` lacks, in order."""
  logged = {row["step"] for row in read_metrics(path)}
  return [step for step in steps if step not in logged]


def check_rows(path: str, steps: Iterable[int], fix: str) -> None:
  """Raises MetricsLost if `metrics.jsonl` at `path` lacks the row of one of `steps` (the
  evaluation steps a run has passed); `fix` ends the message."""
  missing = missing_steps(path, steps)
  if missing:
    raise MetricsLost(
      f"{path} lacks the rows of {len(missing)} evaluation(s) (steps "
      f"{missing[0]}..{missing[-1]}): it was deleted, cut short or damaged, and the "
      f"run cannot be reported on; {fix}"
    )


def column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
  """The values of metric `name` over `rows` [T] as floats, NaN where a row lacks it (the
  `train/*` metrics at step 0) or holds None."""
  return np.array([np.nan if r.get(name) is None else r[name] for r in rows], dtype=float)


def _line(row: Mapping[str, Any]) -> str:
  """One strict-JSON line of `row` (non-finite values as null)."""
  return (
    json.dumps({k: v if math.isfinite(v) else None for k, v in row.items()}, allow_nan=False) + "\n"
  )


class MetricsWriter:
  """Appends metrics of one run directory to `metrics.jsonl` and TensorBoard event files.

  Args:
    directory: the run directory (created if needed).
    resume_step: rows with `step >= resume_step` are dropped first (the resumed run rewrites
      them); None keeps every complete row.
    enabled: False makes every call a no-op (non-zero processes of a multi-host run).
  """

  def __init__(self, directory: str, resume_step: int | None = None, enabled: bool = True):
    self.path = os.path.join(directory, METRICS_FILE)
    self.enabled = enabled
    if not enabled:
      return
    boundary.make_dirs(directory)
    self._rows = read_metrics(self.path)
    if resume_step is not None:
      self._rows = [r for r in self._rows if r["step"] < resume_step]
    self._rewrite()
    # Imported here, not with the module: tensorboardX imports torch when it is installed
    # (seconds), which every command paid at start-up through the config defaults.
    from tensorboardX import SummaryWriter

    boundary.make_dirs(os.path.join(directory, "tensorboard"))
    self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

  def _rewrite(self) -> None:
    """Writes every row atomically and reopens the file for appending."""

    boundary.write_atomically(self.path, lambda f: f.writelines(_line(r) for r in self._rows))
    self._file = boundary.open_append(self.path)

  def _lost(self) -> bool:
    """Whether the open file is no longer the one at `path` (deleted or replaced)."""
    try:
      return not os.path.samestat(os.fstat(self._file.fileno()), os.stat(self.path))
    except FileNotFoundError:
      return True

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in sorted(metrics.items())}}
    if self._lost():
      logging.warning(
        "%s was deleted or replaced during the run; writing its %d rows back.",
        self.path,
        len(self._rows),
      )
      self._file.close()
      self._rewrite()
    self._rows.append(row)
    self._file.write(_line(row))
    self._file.flush()
    for name, value in row.items():
      if name != "step" and math.isfinite(value):
        self._tb.add_scalar(name, value, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
