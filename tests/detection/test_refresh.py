"""Detection that acts: `detection.on_detect = 'refresh'` rolls an offline run back to its
`best_predicted` parameters (kept whatever `detection.keep` says) when the detector fires and
trains on fresh teacher samples to the end; exactly resumable on either side of the switch,
counted in the generation cost, shown in the report, left out of the detector's scoring."""

import os
import shutil

import numpy as np
import pytest
from run_rows import cut_after_checkpoint, untimed_rows

from th_distill import config as config_lib
from th_distill import detection, experiment
from th_distill.config.run_config import RunConfig
from th_distill.detection.monitor import HackingMonitor
from th_distill.observing.metric_names import DETECTOR_REFRESHED, GOLDEN, PROXY
from th_distill.results import detector_runs
from th_distill.rundir import checkpoints
from th_distill.training import sources
from th_distill.training.hooks import RefreshAction

# A departure below the log-log law: on the micro run's held-out proxy (falling faster than a
# power law) it fires within the first steps, so the switch happens mid-run.
FIRES_EARLY = dict(
  rule="departure",
  law="loglog",
  window=3.0,
  threshold=1.0,
  noise_floor=0.001,
  direction="below",
  min_fit_points=3,
  patience=1,
  min_step=0,
)


@pytest.mark.slow
def test_refresh_switches_once_and_resumes_exactly_on_either_side_of_the_switch(micro, tmp_path):
  micro.regimes = ("offline",)
  micro.student.steps, micro.checkpoint_every, micro.eval_every = 12, 3, 1
  micro.detection.update(FIRES_EARLY, on_detect="refresh")  # keep: () in micro
  full = str(tmp_path / "full")
  summary = experiment.run(micro, full)["regimes"]["offline"]
  fired = summary["detected_step"]
  assert fired is not None and 3 < fired <= 6, fired  # between the checkpoints cut at below
  assert summary["refreshed_at_step"] == fired
  expected = untimed_rows(full, "offline")
  assert [r[DETECTOR_REFRESHED] for r in expected] == [float(r["step"] >= fired) for r in expected]
  kept = checkpoints.read_json(os.path.join(full, "offline", "best_predicted.json"))
  assert kept["step"] == summary["best_predicted_step"] < fired
  config = RunConfig.from_config(micro)
  dataset = config.offline.size
  assert summary["teacher_samples_generated"] == dataset + config.student.batch_size * (12 - fired)
  assert summary["student_samples_generated"] == 0
  report = open(os.path.join(full, "report.md")).read()
  assert f"trained on fresh teacher samples from step {fired} on" in report
  assert "refreshed" in report

  for cut in (3, 6):  # a kill before the switch (it is made again) and after it
    partial = str(tmp_path / f"cut{cut}")
    shutil.copytree(full, partial)
    cut_after_checkpoint(partial, "offline", cut)
    experiment.run(micro, partial)
    assert untimed_rows(partial, "offline") == expected, cut


class _Trainer:
  def __init__(self, params):
    self.params = params

  def replace_params(self, params):
    self.params = params


def test_refresh_action_rolls_back_once_at_the_firing_evaluation():
  monitor = HackingMonitor(PROXY, GOLDEN, detection.DetectorSettings(**FIRES_EARLY))
  refreshed, trainer = [], _Trainer("trained")
  action = RefreshAction(monitor, lambda params: f"kept, not {params}", refreshed.append)
  fired_at = None
  for step in range(1, 40):
    row = {PROXY: float(np.exp(-0.1 * step)), GOLDEN: 1.0}
    monitor.observe(step, row)
    out = action(trainer, step, row)
    if monitor.fired and fired_at is None:
      fired_at = step
    assert out == {DETECTOR_REFRESHED: float(fired_at is not None)}
  assert fired_at is not None
  assert refreshed == [fired_at] and trainer.params == "kept, not trained"


def test_refresh_acts_on_the_offline_regime_only(micro):
  micro.detection.on_detect = "refresh"
  config = config_lib.validate(micro)
  assert sources.source_class("offline").refreshes(config)
  for regime in ("online_teacher", "online_student", "mixture"):
    assert not sources.source_class(regime).refreshes(config)
  micro.detection.on_detect = "continue"
  assert not sources.source_class("offline").refreshes(config_lib.validate(micro))
  micro.detection.on_detect = "refreshed"
  with pytest.raises(config_lib.ConfigError, match="detection.on_detect: must be one of"):
    config_lib.validate(micro)


def test_detector_eval_leaves_out_runs_that_refreshed():
  """A refreshed run's curve after the switch is not its regime's: never scored."""
  rows = [
    {"step": s, GOLDEN: 1.0, PROXY: 1.0 / (s + 1), DETECTOR_REFRESHED: float(s >= 3)}
    for s in range(6)
  ]
  reason = detector_runs.load_run("d", 0, rows, 5.0)
  assert isinstance(reason, str) and "refreshed its data at step 3" in reason
  for row in rows:
    row[DETECTOR_REFRESHED] = 0.0
  assert isinstance(detector_runs.load_run("d", 0, rows, 5.0), detector_runs.Run)


def test_study_reports_leave_refreshed_runs_out_of_the_detectors_counts():
  from th_distill.results import summaries

  run = {"outcome": "none", "detected": True, "detected_lag_steps": 0, "detected_lag_evals": 0}
  quality = summaries.detector_quality([{**run, "refreshed_at_step": 1000}, run])
  assert quality["runs"] == 1 and quality["false_positives"] == 1
  assert quality["refreshed_runs"] == 1
