"""The detector as a training callback: kept checkpoints, stopping, resuming, and in the pipeline."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from th_distill import detection, experiment
from th_distill.config import base_config
from th_distill.config.run_config import RunConfig
from th_distill.detection.monitor import HackingMonitor
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints, param_checkpoints
from th_distill.rundir.kept import KeptParameters
from th_distill.training.hooks import DetectorAction

STEPS = np.unique(np.rint(np.geomspace(1, 3000, 45))).astype(int)


def _rows():
  """A proxy that falls as 0.8 t^-0.15 and from step 300 on at a fifth of that rate (what the
  default 'slowdown' rule fires on), and a golden curve with its minimum at step 144."""
  proxy = np.where(STEPS <= 300, 0.8 * STEPS**-0.15, 0.8 * 300**-0.15 * (STEPS / 300) ** -0.03)
  golden = 1.5 + np.abs(np.log(STEPS / 144.0)) / 10
  return [
    {"step": int(s), PROXY: float(p), GOLDEN: float(g)} for s, p, g in zip(STEPS, proxy, golden)
  ]


def _params(step):
  return {"w": jnp.full((3,), float(step))}


def _monitor(tmp_path, **changes):
  section = base_config().detection
  section.update(changes)
  return section, _watch(section, str(tmp_path))


def _watch(section, directory, history=()):
  """The monitor and the parameters it keeps, joined as the training loop joins them (the loop
  itself is exercised by the pipeline test below)."""
  typed = RunConfig.from_config({**base_config().to_dict(), "detection": section.to_dict()})
  det = typed.detection
  monitor = HackingMonitor.replay(det.metric, GOLDEN, det.detector, det.on_detect, history)
  return DetectorAction(monitor, KeptParameters(directory, det.keep))


def test_keeps_best_golden_and_best_predicted_checkpoints_and_stops(tmp_path):
  section, action = _monitor(tmp_path, on_detect="stop", keep=("best_golden", "best_predicted"))
  monitor = action.monitor
  expected = detection.detect(STEPS, [r[PROXY] for r in _rows()])
  assert expected.detected
  stopped_at = None
  for row in _rows():
    extra = action.observe(row["step"], row, _params(row["step"]))
    assert "detector/fired" in extra and set(extra) <= {"detector/score", "detector/fired"}
    if monitor.should_stop:
      stopped_at = row["step"]
      break
  assert stopped_at == expected.step and extra["detector/fired"] == 1.0
  assert "detector/score" in extra  # the score of the evaluation that fired

  best = checkpoints.read_json(str(tmp_path / "best_predicted.json"))
  assert best == {"step": expected.best_predicted_step, "detected_step": expected.step}
  restored = param_checkpoints.load_params(str(tmp_path / "best_predicted"), _params(0))
  np.testing.assert_array_equal(restored["w"], np.full(3, expected.best_predicted_step))
  golden_min_step = min(_rows(), key=lambda r: r[GOLDEN])["step"]
  assert golden_min_step < stopped_at
  assert checkpoints.read_json(str(tmp_path / "best_golden.json"))["step"] == golden_min_step
  restored = param_checkpoints.load_params(str(tmp_path / "best_golden"), _params(0))
  np.testing.assert_array_equal(restored["w"], np.full(3, golden_min_step))
  assert not (tmp_path / "candidates").exists()


def test_candidates_hold_only_what_may_become_best_predicted(tmp_path):
  _, action = _monitor(tmp_path, keep=("best_predicted",))
  monitor = action.monitor
  for row in _rows()[:27]:  # up to step 282, before the detector fires
    action.observe(row["step"], row, _params(row["step"]))
    kept = {int(name) for name in os.listdir(tmp_path / "candidates")}
    assert kept == monitor.detector.candidate_steps() and int(row["step"]) in kept
  assert not monitor.fired and len(kept) < 27


def test_a_monitor_rebuilt_from_logged_rows_continues_identically(tmp_path):
  rows = _rows()
  section, whole = _monitor(tmp_path / "a")
  outputs = [whole.observe(r["step"], r, _params(r["step"])) for r in rows]
  resumed = _watch(section, str(tmp_path / "b"), history=rows[:20])
  again = [resumed.observe(r["step"], r, _params(r["step"])) for r in rows[20:]]
  assert json.dumps(again) == json.dumps(outputs[20:])
  assert resumed.monitor.result.step == whole.monitor.result.step


def test_pipeline_stops_when_the_detector_fires(micro, tmp_path):
  micro.regimes = ("offline",)
  micro.student.steps = 12
  micro.eval_every = 1
  micro.checkpoint_every = 100
  # A hair-trigger detector, so that it fires within a micro run.
  micro.detection.update(
    dict(
      rule="departure",
      min_step=0,
      min_fit_points=4,
      patience=1,
      window=1000.0,
      threshold=1e-9,
      noise_floor=0.0,
      direction="both",
      on_detect="stop",
      keep=("best_golden", "best_predicted"),
    )
  )
  summary = experiment.run(micro, str(tmp_path))
  rows = read_metrics(str(tmp_path / "offline" / "metrics.jsonl"))
  s = summary["regimes"]["offline"]
  assert s["detected"] and rows[-1]["step"] == s["detected_step"] < 12
  assert rows[-1]["detector/fired"] == 1.0 and rows[-2]["detector/fired"] == 0.0
  done = checkpoints.read_json(str(tmp_path / "offline" / "done.json"))
  assert done["stopped_by_detector"] and done["steps"] == s["detected_step"]
  assert os.path.isdir(tmp_path / "offline" / "checkpoints" / str(s["detected_step"]))
  assert (
    checkpoints.read_json(str(tmp_path / "offline" / "best_predicted.json"))["step"]
    == (s["best_predicted_step"])
  )
  assert os.path.isdir(tmp_path / "offline" / "best_golden")


def test_unknown_detector_fields_are_config_errors(micro):
  from th_distill import config as config_lib

  micro.detection.metric = "eval_teacher/proxy/kl"
  micro.detection.keep = ("best",)
  micro.detection.law = "cubic"
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(micro)
  for field in ("detection.metric", "detection.keep", "detection.law: 'cubic' is not one of"):
    assert field in str(error.value)
