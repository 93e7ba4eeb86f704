"""Stage 2's regimes and stage 1's SFTs side by side (th_distill.stages.side_by_side): the same
numbers as one after another, a resume from checkpoints cut mid-run, how many run at once, and
the run's ETA."""

import logging
import os
import shutil

from run_rows import cut_after_checkpoint, run_and_read, untimed_rows

from th_distill import experiment
from th_distill.config.sections import MeshSection
from th_distill.observing import progress
from th_distill.rundir import checkpoints

REGIMES = ("offline", "online_teacher", "online_student", "mixture")


def test_how_many_regimes_run_at_once():
  def at_once(configured, regimes, platform, processes):
    mesh = MeshSection(1, 1, 1, regimes_at_once=configured)
    return mesh.regimes_side_by_side(regimes, platform, processes)

  assert at_once(0, 4, "cpu", 1) == 4
  assert at_once(0, 4, "gpu", 1) == 1
  assert at_once(2, 4, "tpu", 1) == 2
  assert at_once(8, 3, "cpu", 1) == 3
  assert at_once(0, 4, "cpu", 2) == 1  # several processes: one at a time
  assert at_once(0, 0, "cpu", 1) == 1


def _stage1_record(workdir):
  info = checkpoints.read_json(os.path.join(workdir, "stage1", "info.json"))
  return {k: v for k, v in info.items() if k not in ("seconds", "finished_at")}


def _first(messages, *parts):
  return next(i for i, m in enumerate(messages) if all(p in m for p in parts))


def test_side_by_side_gives_the_numbers_of_one_after_another_and_resumes_to_them(
  micro, tmp_path, caplog
):
  micro.regimes = REGIMES
  micro.student.steps, micro.checkpoint_every = 10, 2  # saves of the four regimes overlap
  rows, messages = {}, {}
  for at_once in (1, 0):
    micro.mesh.regimes_at_once = at_once
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
      rows[at_once] = run_and_read(micro, str(tmp_path / f"at_once_{at_once}"))
    messages[at_once] = [r.getMessage() for r in caplog.records]
  assert rows[0] == rows[1]
  # Stage 1's two SFTs: one after the other, then side by side, to the same record.
  assert _stage1_record(tmp_path / "at_once_0") == _stage1_record(tmp_path / "at_once_1")
  for at_once, together in ((1, False), (0, True)):
    student_starts = _first(messages[at_once], "student SFT", ": starting (")
    teacher_done = _first(messages[at_once], "teacher SFT", ": done in ")
    assert (student_starts < teacher_done) == together, messages[at_once]
  # Every regime stopped after its checkpoint of step 4 (as a kill leaves them), resumed at once.
  workdir = str(tmp_path / "cut")
  shutil.copytree(tmp_path / "at_once_0", workdir)
  for regime in REGIMES:
    cut_after_checkpoint(workdir, regime, 4)
  experiment.run(micro, workdir)
  assert {regime: untimed_rows(workdir, regime) for regime in REGIMES} == rows[1]


def test_a_save_inside_the_one_at_a_time_context_is_on_disk_when_it_returns(tmp_path):
  import jax.numpy as jnp

  saver = checkpoints.RunCheckpointer(str(tmp_path / "c"))
  with checkpoints.one_orbax_call_at_a_time():
    saver.save(1, {"w": jnp.ones(3)})
    assert saver.last_complete_step() == 1  # on disk when save returns
  saver.close()


def test_the_eta_counts_the_longest_of_the_phases_run_together():
  def phase(key, units):
    # 1 FLOP a unit, timed at 1 s a FLOP: `units` seconds left.
    work = progress.Work("steps", "distill", units, 1.0, timed_units=1, timed_seconds=1.0)
    return progress.Phase(key, key, [work])

  clock = progress.RunClock([phase("a", 10), phase("b", 30), phase("c", 5)], peak_flops=1.0)
  assert clock.remaining() == (45.0, False)
  clock.run_together(["b", "c"])
  assert clock.remaining() == (40.0, False)
