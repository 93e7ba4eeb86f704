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
import re
from typing import Any, Mapping

from absl import logging
from tensorboardX import SummaryWriter

from th_distill.errors import RunError

# The headline curves (docs/metrics.md): golden and proxy on held-out prompts, proxy on training
# prompts.
GOLDEN = "eval_oracle/golden/fkl"
PROXY = "eval_teacher/proxy/fkl"
TRAIN_PROXY = "train_teacher/proxy/fkl"

# The hacking signature read three ways on held-out prompts, per token and per sequence:
# view -> (golden metric, proxy metric, which model sampled the responses of each).
SIGNATURE_VIEWS = {
    f"{div}{suffix}": (f"{golden_set}/golden/{div}{suffix}", f"{proxy_set}/proxy/{div}{suffix}",
                       sampled_by)
    for div, golden_set, proxy_set, sampled_by in (
        ("fkl", "eval_oracle", "eval_teacher", "golden on oracle samples, proxy on teacher "
         "samples"),
        ("rkl", "eval_student", "eval_student", "both on the student's samples"),
        ("jsd", "eval_oracle", "eval_teacher", "golden on oracle samples, proxy on teacher "
         "samples"))
    for suffix in ("", "_seq")}

_LOGGED = re.compile(r"((eval_oracle|eval_teacher|eval_student|train_teacher)/(proxy|golden)/"
                     r"(fkl|rkl|jsd)(_seq)?)|(train/(proxy|golden)/(fkl|rkl|jsd))|train/loss")


def is_curve_name(name: str) -> bool:
  """Whether a stage-2 run logs a divergence or loss curve of this name (docs/metrics.md)."""
  return _LOGGED.fullmatch(name) is not None


_NONFINITE = ("nan", "inf", "-inf")  # how files written before `null` hold non-finite values


class MetricsLost(RunError):
  """A run's `metrics.jsonl` lacks rows it logged (deleted or cut short)."""


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The complete JSON lines of `path` (a torn last line is ignored; `null` and the 'nan' /
  'inf' strings of older files read as float NaN / inf); [] if it does not exist."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        break
      rows.append({k: float("nan") if v is None else float(v) if v in _NONFINITE else v
                   for k, v in row.items()})
  return rows


def _line(row: Mapping[str, Any]) -> str:
  """One strict-JSON line of `row` (non-finite values as null)."""
  return json.dumps({k: v if math.isfinite(v) else None for k, v in row.items()},
                    allow_nan=False) + "\n"


class MetricsWriter:
  """Appends metrics of one run directory to `metrics.jsonl` and TensorBoard event files.

  Args:
    directory: the run directory (created if needed).
    resume_step: rows with `step >= resume_step` are dropped first (the resumed run rewrites
      them); None keeps every complete row.
    enabled: False makes every call a no-op (non-zero processes of a multi-host run).
  """

  def __init__(self, directory: str, resume_step: int | None = None, enabled: bool = True):
    self.path = os.path.join(directory, "metrics.jsonl")
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(directory, exist_ok=True)
    self._rows = read_metrics(self.path)
    if resume_step is not None:
      self._rows = [r for r in self._rows if r["step"] < resume_step]
    self._rewrite()
    self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

  def _rewrite(self) -> None:
    """Writes every row atomically and reopens the file for appending."""
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(_line(r) for r in self._rows)
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")

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
      logging.warning("%s was deleted or replaced during the run; writing its %d rows back.",
                      self.path, len(self._rows))
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
