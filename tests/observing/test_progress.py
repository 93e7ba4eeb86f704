"""Progress lines and ETAs (th_distill.observing.progress), the plan a run logs before any work
(experiment.plan), and the command lines' quiet logs."""

import logging
import os
import subprocess
import sys

import pytest
from conftest import write_micro_config_file

from th_distill import cli
from th_distill.config import base_config
from th_distill.config.run_config import RunConfig
from th_distill.observing import progress
from th_distill.planning import workload

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def clock_time(monkeypatch):
  """A settable clock for `progress`: `clock_time.t` seconds."""

  class Time:
    t = 0.0

  monkeypatch.setattr(progress, "_now", lambda: Time.t)
  return Time


def _advance(phase, name, seconds, times=1):
  for _ in range(times):
    _advance.time.t += seconds
    phase.advance(name)


def test_eta_leaves_the_first_compiling_unit_out(clock_time):
  _advance.time = clock_time
  sft = progress.Phase("sft", "teacher SFT", [progress.Work("steps", "sft", 100, flops=2.0)])
  distill = progress.Phase(
    "regime", "regime 1 of 1", [progress.Work("steps", "distill", 50, flops=4.0)]
  )
  clock = progress.RunClock([sft, distill], peak_flops=None, backend="gpu")
  sft.start()
  _advance(sft, "steps", 30.0)  # the first step compiles: 30 s
  _advance(sft, "steps", 1.0, 9)  # then 1 s per step
  assert sft.remaining() == (90.0, False)
  # The regime's distillation steps: the SFT's seconds per FLOP until they are timed.
  assert distill.remaining() == (100.0, False)
  assert clock.remaining() == (190.0, False)
  assert "phase ETA 1 min 30 s, run ETA 3 min 10 s" in sft.eta_text()


def test_untimed_kinds_use_the_matmul_rate_as_a_lower_bound(clock_time):
  _advance.time = clock_time
  phase = progress.Phase("p", "oracle samples", [progress.Work("samples", "sample", 1000, 5.0)])
  clock = progress.RunClock([phase], peak_flops=10.0, backend="gpu")
  assert clock.remaining() == (500.0, True)
  assert "run ETA at least 8 min 20 s" in phase.eta_text()
  phase.start()
  _advance(phase, "samples", 60.0)  # compiles
  assert clock.remaining() == (999 * 0.5, True)
  _advance(phase, "samples", 0.5, 2)
  assert clock.remaining() == (997 * 0.5, False)


def test_a_long_cpu_run_warns_once_and_points_to_scaling(clock_time, caplog):
  caplog.set_level(logging.INFO)
  work = [progress.Work("steps", "distill", 10**6, 1.0)]
  progress.RunClock([progress.Phase("p", "p", work)], peak_flops=1.0, backend="gpu").warn_if_long()
  assert not caplog.records
  clock = progress.RunClock([progress.Phase("p", "p", work)], peak_flops=1.0, backend="cpu")
  clock.warn_if_long()
  clock.warn_if_long()
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "docs/scaling.md" in warnings[0].getMessage()
  assert "11.6 days" in warnings[0].getMessage()


def test_progress_lines_count_units_with_an_eta(clock_time, caplog):
  caplog.set_level(logging.INFO)
  _advance.time = clock_time
  phase = progress.Phase("p", "stage 1: teacher SFT", [progress.Work("steps", "sft", 100, 1.0)])
  progress.RunClock([phase], backend="gpu")
  phase.start()
  _advance(phase, "steps", 10.0, 100)
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == "stage 1: teacher SFT: starting (100 steps; 1e+02 FLOP)"
  assert lines[1].startswith("stage 1: teacher SFT: 100 steps, 10.00 s each after the first")
  assert (
    "stage 1: teacher SFT: 10/100 steps (10%), 1 min 40 s; phase ETA 15 min 00 s, "
    "run ETA 15 min 00 s" in lines
  )


def test_work_of_the_default_study():
  config = RunConfig.from_config(base_config())
  phases = workload.phases(config, data_parallel=1, done={workload.ORACLE_SAMPLES})
  assert [p.title.split(" (")[0] for p in phases] == [
    "stage 1: oracle calibration",
    "stage 1: oracle samples",
    "stage 1: teacher SFT",
    "stage 1: student SFT",
    "stage 1: evaluation sets",
    "stage 2: offline dataset",
    "regime 1 of 3",
    "regime 2 of 3",
    "regime 3 of 3",
  ]
  assert [p.finished for p in phases] == [False, True] + [False] * 7
  by_key = {p.key: p for p in phases}
  assert by_key["teacher SFT"].work["steps"].units == config.teacher.steps
  online = by_key[workload.regime_key("online_teacher")].work
  assert online["generated batches"].units == online["steps"].units == config.student.steps
  assert "generated batches" not in by_key[workload.regime_key("offline")].work


def _main(config_file, workdir):
  result = subprocess.run(
    [sys.executable, "-m", "th_distill.main", f"--config={config_file}", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  return [line.split("] ", 1)[-1] for line in result.stderr.splitlines()]


@pytest.mark.slow
def test_the_main_command_logs_its_plan_first_then_regime_k_of_n(tmp_path):
  config_file = write_micro_config_file(
    tmp_path / "micro.py", "c.regimes = ('offline', 'online_teacher')"
  )
  lines = _main(config_file, tmp_path / "run")
  plan = lines.index(next(line for line in lines if line.startswith("Plan: 1 cpu device(s)")))
  first_work = lines.index(
    next(
      line
      for line in lines
      if line.startswith("stage 1: oracle calibration") and "starting" in line
    )
  )
  assert plan < first_work
  plan_text = "\n".join(lines[plan:first_work])
  for fragment in (
    "oracle ",
    "parameters",
    "memory per device",
    "GiB",
    "teacher SFT (batch 8):",
    "5 steps",
    "regime 2 of 2 (online_teacher):",
    "time: at least",
  ):
    assert fragment in plan_text, fragment
  for title in ("regime 1 of 2 (offline)", "regime 2 of 2 (online_teacher)"):
    assert any(
      line.startswith(f"{title}: 3/6 steps (50%), golden ") and "run ETA" in line for line in lines
    ), title
  # JAX logs this at INFO while it looks for backends; the command lines filter it out.
  assert not any("Unable to initialize backend" in line for line in lines)
  lines = _main(config_file, tmp_path / "run")  # everything is cached now
  assert sum("done by an earlier run (cached)" in line for line in lines) == 8


def test_the_tpu_backend_message_is_filtered():
  record = logging.LogRecord(
    "jax._src.xla_bridge",
    logging.INFO,
    "/venv/site-packages/jax/_src/xla_bridge.py",
    846,
    "Unable to initialize backend 'tpu': no libtpu.so",
    (),
    None,
  )
  assert not cli.QuietLibraries().filter(record)
  record.levelno = logging.WARNING
  assert cli.QuietLibraries().filter(record)


def test_the_plan_warns_of_a_program_over_a_device_when_told_to_go_on(
  micro, tmp_path, monkeypatch, caplog
):
  """(Without `mesh.ignore_memory_estimate` it stops: tests/planning/test_preview.py.)"""
  from th_distill import partitioning
  from th_distill.planning import preview
  from th_distill.rundir.layout import RunDirectory
  from th_distill.training.program_builders import Models

  caplog.set_level(logging.INFO)
  monkeypatch.setattr(preview, "device_gib", lambda device: 1e-6)
  micro.mesh.ignore_memory_estimate = True
  typed = RunConfig.from_config(micro)
  preview.log_plan(
    typed,
    RunDirectory(str(tmp_path)),
    partitioning.Partitioner.from_config(micro.mesh),
    Models.from_config(typed),
  )
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "more than the 0.0 GiB a device has" in warnings[0]
  assert "going on (mesh.ignore_memory_estimate = True)" in warnings[0]


SHOWN = """
import sys
from absl import logging
from th_distill.observing import progress
if sys.argv[1] == "silenced":
  logging.set_verbosity(logging.WARNING)
level = logging.get_absl_logger().level
with progress.shown():
  logging.info("inside the call")
logging.info("after the call")
assert logging.get_absl_logger().level == level, "the absl logger's level is not restored"
"""


@pytest.mark.parametrize("caller", ["default", "silenced"])
def test_a_library_call_shows_its_progress_unless_the_caller_chose_a_verbosity(caller):
  """From Python, absl shows no INFO line by default; `progress.shown()` (around
  `experiment.run` and `study.run`) shows them for the call only, and keeps a verbosity the
  caller set (absl.logging.set_verbosity(WARNING) silences the run)."""
  env = {**os.environ, "PYTHONPATH": REPO}
  done = subprocess.run(
    [sys.executable, "-c", SHOWN, caller], env=env, capture_output=True, text=True, check=True
  )
  assert ("inside the call" in done.stderr) == (caller == "default"), done.stderr
  assert "after the call" not in done.stderr
