"""The run directory is a boundary: no writer follows a link or writes into a special file it did
not create, temporary files are created exclusively, and a resume on other devices is refused
(docs/reliability.md, 'The run directory is a boundary')."""

import json
import os
import shutil

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from th_distill import boundary, experiment
from th_distill.observing.metrics_io import MetricsWriter, read_metrics
from th_distill.results import plots
from th_distill.rundir import checkpoints, devices, param_checkpoints
from th_distill.rundir import lock as workdir_lock

SECRET = "a file outside the run directory\n"


@pytest.fixture
def outside(tmp_path):
  """A file outside the run directory (`tmp_path/run`), which no writer may touch."""
  path = tmp_path / "outside.txt"
  path.write_text(SECRET)
  (tmp_path / "run").mkdir()
  return path


def _figure(path):
  fig = plt.figure()
  plt.plot([0, 1])
  plots._save(fig, path)
  plt.close(fig)


def _metrics(path):
  writer = MetricsWriter(os.path.dirname(path))
  writer.write(0, {"train/loss": 1.0})
  writer.close()


# Every writer of a run directory, as a function of the path it writes.
WRITERS = {
  "json": lambda path: checkpoints.write_json(path, {"x": 1}),
  "npz": lambda path: checkpoints.save_arrays(path, {"x": np.zeros(3)}),
  "report": lambda path: boundary.write_text(path, "# report\n"),
  "figure": _figure,
  "metrics": _metrics,
}
NAMES = {"json": "summary.json", "npz": "oracle_data.npz", "report": "report.md"}
NAMES.update(figure="curves.png", metrics="metrics.jsonl")


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_writer_refuses_a_link_in_place_of_its_file(tmp_path, outside, writer):
  path = tmp_path / "run" / NAMES[writer]
  path.symlink_to(outside)
  with pytest.raises(boundary.UnsafePath, match=f"{path} is a symbolic link"):
    WRITERS[writer](str(path))
  assert outside.read_text() == SECRET and path.is_symlink()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_link_at_a_writers_temporary_name_is_replaced_not_followed(tmp_path, outside, writer):
  path = tmp_path / "run" / NAMES[writer]
  suffix = {"npz": ".npz", "figure": ".png"}.get(writer, "")
  (tmp_path / "run" / f"{path.name}.tmp{os.getpid()}{suffix}").symlink_to(outside)
  WRITERS[writer](str(path))
  assert outside.read_text() == SECRET
  assert path.is_file() and not path.is_symlink()
  assert set(os.listdir(path.parent)) - {"tensorboard"} == {path.name}  # the link is gone


def test_the_metrics_file_is_never_appended_through_a_link(tmp_path, outside):
  run = tmp_path / "run"
  writer = MetricsWriter(str(run))
  writer.write(0, {"train/loss": 1.0})
  os.remove(run / "metrics.jsonl")
  (run / "metrics.jsonl").symlink_to(outside)  # planted during the run: the next row refuses
  with pytest.raises(boundary.UnsafePath, match="metrics.jsonl is a symbolic link"):
    writer.write(1, {"train/loss": 1.0})
  assert outside.read_text() == SECRET


def test_a_special_file_is_refused_without_blocking(tmp_path):
  fifo = tmp_path / "report.md"
  os.mkfifo(fifo)
  with pytest.raises(boundary.UnsafePath, match="report.md is a special file"):
    boundary.write_text(str(fifo), "x")


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_the_lock_refuses_a_link_or_special_file(tmp_path, outside, kind):
  lock = tmp_path / "run" / ".lock"
  lock.symlink_to(outside) if kind == "link" else os.mkfifo(lock)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f"{lock} is a"):
    with workdir_lock.hold(str(tmp_path / "run")):
      pass
  assert outside.read_text() == SECRET


def test_checkpoints_refuse_a_linked_folder(tmp_path):
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  (tmp_path / "run" / "offline").mkdir(parents=True)
  linked = tmp_path / "run" / "offline" / "checkpoints"
  linked.symlink_to(elsewhere)
  with pytest.raises(boundary.UnsafePath, match=f"{linked} is a symbolic link"):
    checkpoints.RunCheckpointer(str(linked))
  with pytest.raises(boundary.UnsafePath, match=f"{linked} is a symbolic link"):
    param_checkpoints.save_params(str(linked), {"w": jnp.ones(3)})
  with pytest.raises(boundary.UnsafePath, match=f"{linked} is a symbolic link"):
    param_checkpoints.save_param_trees(str(linked / "params"), {"a": {"w": jnp.ones(3)}})
  assert os.listdir(elsewhere) == []


def test_a_folder_made_for_the_run_is_never_a_link(tmp_path):
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  (tmp_path / "study").symlink_to(elsewhere)  # e.g. a study's report folder
  with pytest.raises(boundary.UnsafePath, match="study is a symbolic link"):
    boundary.make_dirs(str(tmp_path / "study"))


# A whole run: a planted link, and a resume on other devices.

REGIME = "offline"


def test_a_run_refuses_a_regimes_checkpoints_linked_out_of_the_workdir(finished, workdir, tmp_path):
  regime = os.path.join(workdir, REGIME)
  os.remove(os.path.join(regime, "done.json"))
  outside = str(tmp_path / "outside_checkpoints")
  shutil.move(os.path.join(regime, "checkpoints"), outside)
  os.symlink(outside, os.path.join(regime, "checkpoints"))
  before = sorted(os.listdir(outside))
  with pytest.raises(boundary.UnsafePath, match="checkpoints is a symbolic link"):
    experiment.run(finished[1], workdir)
  assert sorted(os.listdir(outside)) == before


def _record_devices(workdir, mesh):
  path = os.path.join(workdir, "devices.json")
  other = {"platform": "cpu", "count": 4, "mesh": [4, 1, 1]}
  checkpoints.write_json(
    path, {REGIME: devices.describe("cpu", mesh), "stage1": other, "online": other}
  )


def test_unfinished_work_started_on_other_devices_is_refused_naming_the_flags(finished, workdir):
  one = devices.describe("cpu", (1, 1, 1))
  assert json.load(open(os.path.join(workdir, "devices.json"))) == {REGIME: one, "stage1": one}
  os.remove(os.path.join(workdir, REGIME, "done.json"))
  rows = read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl"))
  _record_devices(workdir, (2, 1, 1))  # stage 1 is finished: its record is not checked
  with pytest.raises(devices.DevicesChanged) as error:
    experiment.run(finished[1], workdir)
  assert "started on 2 cpu device(s), mesh (data, fsdp, model) = (2, 1, 1)" in str(error.value)
  assert (
    "resume it with --config.mesh.data=2 --config.mesh.fsdp=1 --config.mesh.model=1 on 2 cpu "
    "device(s) (XLA_FLAGS=--xla_force_host_platform_device_count=2)"
  ) in str(error.value)
  assert read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl")) == rows  # nothing ran


def test_finished_work_is_reused_on_other_devices(finished, workdir):
  done = os.path.join(workdir, REGIME, "done.json")
  stamp = os.path.getmtime(done)
  _record_devices(workdir, (2, 1, 1))
  experiment.run(finished[1], workdir)
  assert os.path.getmtime(done) == stamp
  record = json.load(open(os.path.join(workdir, "devices.json")))
  assert record[REGIME]["count"] == 1 and record["online"]["count"] == 4  # not this run's: kept
