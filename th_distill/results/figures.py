"""The figures of a run or a study: curves.png, proxy_golden.png and detector.png."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import detection
from th_distill.observing.metric_names import GOLDEN, PROXY, TRAIN_PROXY
from th_distill.observing.metrics_io import column
from th_distill.results import plots


def _curves(
  rows_by_label: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], metric: str
) -> dict[str, plots.Curve]:
  """{label: Curve of `metric` over the label's seeds}, cut to the seeds' common length."""
  curves = {}
  for label, runs in rows_by_label.items():
    length = min(len(rows) for rows in runs)
    curves[label] = plots.Curve(
      np.array([r["step"] for r in runs[0][:length]]),
      np.stack([column(rows[:length], metric) for rows in runs]),
    )
  return curves


def write_figures(
  directory: str,
  rows_by_label: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
  settings: detection.DetectorSettings,
  metric: str,
  teacher_golden: float | None = None,
) -> None:
  """curves.png, proxy_golden.png and detector.png (seed 0 of every label) in `directory`;
  `teacher_golden` (the teacher's own golden distance, a seed mean for a study) is drawn as a
  horizontal line on the golden panel."""
  golden, proxy = _curves(rows_by_label, GOLDEN), _curves(rows_by_label, PROXY)
  train_proxy = _curves(rows_by_label, TRAIN_PROXY)
  teacher_line = {} if teacher_golden is None else {"teacher": teacher_golden}
  plots.plot_metric_panels(
    [
      ("golden: KL(oracle || student), held-out", golden),
      ("proxy: KL(teacher || student), held-out", proxy),
      ("proxy on training prompts", train_proxy),
    ],
    os.path.join(directory, "curves.png"),
    levels=[teacher_line],
  )
  plots.plot_proxy_golden(
    [
      ("golden vs proxy (held-out prompts)", proxy, golden),
      ("golden vs proxy (training prompts)", train_proxy, golden),
    ],
    os.path.join(directory, "proxy_golden.png"),
  )
  watched = _curves(rows_by_label, metric)
  runs = {}
  for label, curve in watched.items():
    first = plots.Curve(curve.steps, curve.values[:1])
    runs[label] = (
      first,
      plots.Curve(golden[label].steps, golden[label].values[:1]),
      detection.detect(first.steps, first.values[0], settings),
    )
  plots.plot_detections(runs, metric, os.path.join(directory, "detector.png"))
