"""The detector on a logged curve, read from each form it is logged in: values, (step, value)
pairs, a `metrics.jsonl`, a TensorBoard event file and their folders, each written by the
library's own `MetricsWriter`; every form gives the verdict of `detect` on the curve itself."""

import glob
import os
import struct

import numpy as np
import pytest

from th_distill.detection import detect
from th_distill.detection.curves import detect_curve, read_curve
from th_distill.observing.metric_names import PROXY
from th_distill.observing.metrics_io import MetricsWriter

STEPS = np.unique(np.rint(np.geomspace(1, 3000, 45)))
# A held-out proxy that keeps falling, at a third of its rate from step 300 on: the detector's
# default rule ('slowdown') fires on it (tests/detection/test_detection.py).
TURN = 300
VALUES = np.where(
  STEPS <= TURN, 0.8 * STEPS**-0.15, 0.8 * TURN**-0.15 * (STEPS / TURN) ** -0.05
).astype(np.float32)  # TensorBoard keeps float32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  directory = tmp_path_factory.mktemp("run")
  writer = MetricsWriter(str(directory))
  for step, value in zip(STEPS, VALUES):
    writer.write(int(step), {PROXY: value, "other": 1.0} if step > 1 else {"other": 1.0})
  writer.close()
  return directory


def test_every_form_gives_the_verdict_on_the_curve(run):
  expected = detect(STEPS[1:], VALUES[1:])  # the first row lacks the metric
  assert expected.detected
  (events,) = glob.glob(str(run / "tensorboard" / "*tfevents*"))
  forms = {
    "values": (list(VALUES[1:]), STEPS[1:]),
    "pairs": (np.stack([STEPS[1:], VALUES[1:]], axis=1), None),
    "metrics.jsonl": (run / "metrics.jsonl", None),
    "run folder": (str(run), None),
    "event file": (events, None),
    "event folder": (str(run / "tensorboard"), None),
  }
  for name, (source, steps) in forms.items():
    found_steps, found_values = read_curve(source, PROXY, steps)
    np.testing.assert_array_equal(found_steps, STEPS[1:], err_msg=name)
    np.testing.assert_array_equal(found_values, VALUES[1:], err_msg=name)
    found = detect_curve(source, PROXY, steps)
    assert (found.detected, found.step, found.best_predicted_step) == (
      expected.detected,
      expected.step,
      expected.best_predicted_step,
    ), name


def test_a_torn_event_file_reads_up_to_its_last_whole_record(run, tmp_path):
  (events,) = glob.glob(str(run / "tensorboard" / "*tfevents*"))
  with open(events, "rb") as f:
    data = f.read()
  starts, at = [], 0
  while at < len(data):  # TFRecord framing: length (8 bytes), its CRC (4), data, its CRC (4)
    starts.append(at)
    at += 16 + struct.unpack("<Q", data[at : at + 8])[0]
  torn = tmp_path / os.path.basename(events)
  torn.write_bytes(data[: starts[-2] + 20])  # the last step's records: the first cut short
  steps, values = read_curve(str(torn), PROXY)
  np.testing.assert_array_equal(steps, STEPS[1:-1])
  np.testing.assert_array_equal(values, VALUES[1:-1])


def test_a_missing_metric_or_file_is_named(run, tmp_path):
  with pytest.raises(ValueError, match="no values of 'eval/nothing'"):
    read_curve(run / "metrics.jsonl", "eval/nothing")
  with pytest.raises(FileNotFoundError, match="no such file"):
    read_curve(str(tmp_path / "absent.jsonl"))
  with pytest.raises(ValueError, match="no metrics.jsonl and no TensorBoard event file"):
    read_curve(str(tmp_path))
