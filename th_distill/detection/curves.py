"""The detector on any logged curve: a list of values, a `metrics.jsonl`, or TensorBoard events.

`read_curve(source, metric)` -> (steps [T], values [T]) and `detect_curve(source, metric)` ->
the detector's `Detection`, where `source` is

- a sequence of values (at `steps`, default 0, 1, ..., T - 1), or of (step, value) pairs;
- the path of a `metrics.jsonl` (one JSON row per evaluation with `step`: what
  `observing.metrics_io.MetricsWriter` writes, and any file of that shape);
- the path of a TensorBoard event file (`*tfevents*`: scalars by tag, as `MetricsWriter`, torch's
  and TensorFlow's summary writers write them), or a folder of them (a resumed run's several
  files merged, a later file's value of a step replacing an earlier one's);
- a run folder holding `metrics.jsonl` (else its `tensorboard/` events).

Steps where the metric is absent (the `train/*` metrics at step 0) are left out. An event file
is read record by record (TFRecord framing: length, its masked CRC-32C, data, its masked
CRC-32C); a record cut short or whose checksums do not match ends the file (a run killed while
writing it), with a warning if more bytes follow.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from th_distill.detection.detector import Detection, detect
from th_distill.detection.settings import DEFAULTS, DetectorSettings
from th_distill.observing.metric_names import PROXY
from th_distill.observing.metrics_io import METRICS_FILE, column, read_metrics

EVENTS_PATTERN = "*tfevents*"


def _event_records(path: str) -> list[bytes]:
  """The complete records of the TFRecord file `path`, in order."""
  from tensorboardX.record_writer import masked_crc32c  # imports torch when installed: late

  with open(path, "rb") as f:
    data = f.read()
  records, at = [], 0
  while at + 12 <= len(data):
    header = data[at : at + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
    end = at + 12 + length + 4
    if header_crc != masked_crc32c(header) or end > len(data):
      break
    record = data[at + 12 : end - 4]
    if struct.unpack("<I", data[end - 4 : end])[0] != masked_crc32c(record):
      break
    records.append(record)
    at = end
  if at < len(data):
    logging.warning("%s: %d bytes after its last complete record left out.", path, len(data) - at)
  return records


def _event_scalars(path: str, tag: str) -> dict[int, float]:
  """{step: value} of the scalar `tag` in the event file `path`."""
  from tensorboardX.proto import event_pb2

  found = {}
  for record in _event_records(path):
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      if value.tag != tag:
        continue
      if value.HasField("tensor") and value.tensor.float_val:
        found[int(event.step)] = float(value.tensor.float_val[0])
      else:
        found[int(event.step)] = float(value.simple_value)
  return found


def _events_curve(paths: Sequence[str], metric: str) -> tuple[np.ndarray, np.ndarray]:
  merged: dict[int, float] = {}
  for path in sorted(paths):  # the writers name their files by creation time
    merged.update(_event_scalars(path, metric))
  steps = sorted(merged)
  return np.asarray(steps, float), np.asarray([merged[s] for s in steps], float)


def _rows_curve(path: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [row for row in read_metrics(path) if metric in row]
  return np.asarray([row["step"] for row in rows], float), column(rows, metric)


def _path_curve(path: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, METRICS_FILE)):
      return _rows_curve(os.path.join(path, METRICS_FILE), metric)
    events = glob.glob(os.path.join(path, EVENTS_PATTERN))
    events = events or glob.glob(os.path.join(path, "tensorboard", EVENTS_PATTERN))
    if not events:
      raise ValueError(f"{path}: no {METRICS_FILE} and no TensorBoard event file in it.")
    return _events_curve(events, metric)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (a metrics.jsonl or an event file).")
  if "tfevents" in os.path.basename(path):
    return _events_curve([path], metric)
  return _rows_curve(path, metric)


def read_curve(
  source: Any, metric: str = PROXY, steps: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(steps [T], values [T]) float arrays of `metric` in `source` (module docstring); `steps`
  only for a sequence of values. ValueError if the curve is empty (naming the metric)."""
  if isinstance(source, (str, os.PathLike)):
    found = _path_curve(os.fspath(source), metric)
  else:
    values = np.asarray(source, float)
    if values.ndim == 2 and values.shape[1] == 2 and steps is None:
      found = values[:, 0], values[:, 1]
    elif values.ndim == 1:
      found = np.arange(len(values), dtype=float) if steps is None else np.asarray(steps, float)
      found = found, values
    else:
      raise ValueError(f"a curve is values [T] or (step, value) pairs [T, 2]; got {values.shape}.")
  if not len(found[1]):
    where = source if isinstance(source, (str, os.PathLike)) else "the values given"
    raise ValueError(f"{where}: no values of {metric!r} (pass metric=NAME).")
  return found


def detect_curve(
  source: Any,
  metric: str = PROXY,
  steps: Sequence[float] | None = None,
  settings: DetectorSettings = DEFAULTS,
) -> Detection:
  """The detector's verdict (`detection.detect`) on the curve `read_curve(source, metric,
  steps)`. Its default settings score evaluations from step 100 on (`min_step`)."""
  return detect(*read_curve(source, metric, steps), settings=settings)
