"""Metric logging: one JSON object per logged step in `metrics.jsonl`, plus TensorBoard events.

Each line of `metrics.jsonl` holds `step` and metric names (docs/metrics.md). Lines are flushed as
they are written, so a killed run loses at most the line being written; `MetricsWriter` drops a
torn last line and every line past the step a resumed run restarts from, so the file always reads
as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

from tensorboardX import SummaryWriter

# The headline curves (docs/metrics.md): golden and proxy on held-out prompts, proxy on training
# prompts.
GOLDEN = "eval_oracle/golden/fkl"
PROXY = "eval_teacher/proxy/fkl"
TRAIN_PROXY = "train_teacher/proxy/fkl"

_LOGGED = re.compile(r"((eval_oracle|eval_teacher|eval_student|train_teacher)/(proxy|golden)/"
                     r"(fkl|rkl|jsd)(_seq)?)|(train/(proxy|golden)/(fkl|rkl|jsd))|train/loss")


def is_curve_name(name: str) -> bool:
  """Whether a stage-2 run logs a divergence or loss curve of this name (docs/metrics.md)."""
  return _LOGGED.fullmatch(name) is not None


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The complete JSON lines of `path` (a torn last line is ignored); [] if it does not exist."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


def _jsonable(value: Any) -> Any:
  value = float(value)
  return value if math.isfinite(value) else str(value)


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
    rows = read_metrics(self.path)
    if resume_step is not None:
      rows = [r for r in rows if r["step"] < resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _jsonable(v) for k, v in sorted(metrics.items())}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for name, value in row.items():
      if name != "step" and isinstance(value, float):
        self._tb.add_scalar(name, value, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
