"""Damaged or missing files of a run directory: a rebuildable one (derived JSON, an evaluation set,
the offline dataset) is set aside and rebuilt to the same contents; one that holds results is
named with its role and the fix (docs/reliability.md)."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

from th_distill import experiment
from th_distill.config.run_config import RunConfig
from th_distill.observing.metrics_io import MetricsLost, read_metrics
from th_distill.results import report
from th_distill.rundir import checkpoints, param_checkpoints
from th_distill.rundir.layout import RunDirectory, Stage1Directory

REGIME = "offline"


@pytest.fixture
def workdir(workdir):
  return RunDirectory(workdir)


@pytest.fixture
def config(finished):
  return finished[1].copy_and_resolve_references()


def _arrays(path):
  return checkpoints.load_arrays(path)


def test_rebuildable_files_are_set_aside_and_rebuilt_to_the_same_contents(workdir, config):
  stage1, regime = workdir.stage1, workdir.regime(REGIME)
  before = {
    "eval": _arrays(stage1.eval_set("teacher")),
    "offline": _arrays(workdir.offline_dataset),
    "rows": read_metrics(regime.metrics),
  }
  for path in (workdir.config, regime.done_marker, regime.started_marker):
    with open(path, "w") as f:
      f.write("{not json")
  open(stage1.eval_set("teacher"), "w").close()  # 0 bytes
  with open(workdir.offline_dataset, "r+b") as f:
    f.truncate(os.path.getsize(workdir.offline_dataset) // 2)

  experiment.run(config, workdir.path)  # the regime resumes from its last checkpoint

  for path in (
    workdir.config,
    regime.done_marker,
    regime.started_marker,
    stage1.eval_set("teacher"),
    workdir.offline_dataset,
  ):
    assert os.path.exists(f"{path}.damaged"), path
  assert checkpoints.read_json(regime.done_marker)["steps"] == config.student.steps
  assert checkpoints.read_json(workdir.config)["seed"] == config.seed
  for name, arrays in (("eval", stage1.eval_set("teacher")), ("offline", workdir.offline_dataset)):
    rebuilt = _arrays(arrays)
    assert rebuilt.keys() == before[name].keys()
    for key in rebuilt:
      np.testing.assert_array_equal(rebuilt[key], before[name][key])
  rows = read_metrics(regime.metrics)
  assert [_values(r) for r in rows] == [_values(r) for r in before["rows"]]


def _values(row):
  """A metrics row without its timings."""
  return json.dumps(
    {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}, sort_keys=True
  )


def test_a_damaged_stage1_record_is_named_with_its_role_and_the_fix(workdir, config):
  with open(workdir.stage1.marker, "w") as f:
    f.write("garbage")
  with pytest.raises(
    checkpoints.DamagedFile,
    match=r"stage1/info\.json \(stage 1's record: .*\) cannot be read \(JSONDecodeError.*"
    r"delete it to run stage 1 again",
  ):
    experiment.run(config, workdir.path)


def test_a_deleted_stage1_checkpoint_is_named_with_its_role_and_the_fix(workdir, config):
  shutil.rmtree(os.path.join(workdir.stage1.params, "teacher"))
  with pytest.raises(
    checkpoints.DamagedFile,
    match=r"stage1/params \(stage 1's parameters: .*\) cannot be read .*; delete "
    r".*stage1/info\.json to run stage 1 again",
  ) as error:
    experiment.run(config, workdir.path)
  assert "\n" not in str(error.value)


def test_a_garbage_checkpoint_file_is_named_inside_its_folder(workdir, config):
  metadata = os.path.join(workdir.stage1.params, "teacher", "_METADATA")
  with open(metadata, "wb") as f:
    f.write(bytes(range(128, 256)))  # not UTF-8
  with pytest.raises(checkpoints.DamagedFile) as error:
    experiment.run(config, workdir.path)
  assert f"cannot be read ({metadata}: UnicodeDecodeError" in str(error.value)


def test_a_damaged_record_of_an_unfinished_stage1_is_set_aside(tmp_path):
  directory = Stage1Directory(str(tmp_path))
  directory.write_started({"fingerprint": "x"})
  directory.set_aside_damaged_record()
  assert os.path.exists(directory.started_marker)  # readable: kept
  with open(directory.started_marker, "w") as f:
    f.write("[1, 2")
  directory.set_aside_damaged_record()
  assert not os.path.exists(directory.started_marker)
  assert os.path.exists(directory.started_marker + ".damaged")


def test_the_report_refuses_a_regime_with_missing_rows(workdir, config):
  path = workdir.regime(REGIME).metrics
  lines = open(path).readlines()
  open(path, "w").writelines(lines[:1])
  info = checkpoints.read_json(workdir.stage1.marker)
  with pytest.raises(MetricsLost, match=r"lacks the rows of 2 evaluation\(s\) \(steps 3\.\.6\)"):
    report.write_report(workdir.path, RunConfig.from_config(config), info)


def test_best_predicted_moved_before_a_kill_is_kept_without_a_false_warning(tmp_path, caplog):
  """A kill after the fired detector's best candidate moved to best_predicted/ (before its
  record was written): the resumed run fires again at the same evaluation, keeps those
  parameters and writes the record, with no 'no saved parameters' warning."""
  from detection.test_monitor import _monitor, _params, _rows, _watch

  section, action = _monitor(tmp_path, keep=("best_predicted",))
  rows = _rows()
  fired = next(
    i
    for i, row in enumerate(rows)
    if action.observe(row["step"], row, _params(row["step"]))["detector/fired"]
  )
  expected = checkpoints.read_json(str(tmp_path / "best_predicted.json"))
  os.remove(tmp_path / "best_predicted.json")  # the kill came before the record
  resumed = _watch(section, str(tmp_path), history=rows[: fired - 2])
  with caplog.at_level(logging.WARNING):
    for row in rows[fired - 2 : fired + 1]:
      resumed.observe(row["step"], row, _params(row["step"]))
  assert "No saved parameters" not in caplog.text
  assert checkpoints.read_json(str(tmp_path / "best_predicted.json")) == expected
  restored = param_checkpoints.load_params(str(tmp_path / "best_predicted"), _params(0))
  np.testing.assert_array_equal(restored["w"], np.full(3, expected["step"]))
