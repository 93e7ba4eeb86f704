"""Runs survive pre-emption (SIGTERM) and kills (SIGKILL) and then log exactly what an
uninterrupted run logs; a pre-empted run exits with status 75 (EX_TEMPFAIL, "retry"); damaged or
incomplete checkpoints are skipped with a warning."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest
from conftest import micro_config, write_micro_config_file

from th_distill import errors, experiment
from th_distill.config import load_config_file
from th_distill.observing import progress
from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints, preemption

REGIME = "online_student"
UNTIMED = ("time/", "throughput/")


def _rows(workdir):
  return [
    {k: v for k, v in row.items() if not k.startswith(UNTIMED)}
    for row in read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl"))
  ]


def _start(config_path, workdir):
  return subprocess.Popen(
    [sys.executable, "-m", "th_distill.main", f"--config={config_path}", f"--workdir={workdir}"],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait_for_step(workdir, step, process, timeout=600):
  """Waits until the run has logged a row at `step` or later."""
  path = os.path.join(workdir, REGIME, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, process.stdout.read()
    if os.path.exists(path) and any(r["step"] >= step for r in read_metrics(path)):
      return
    time.sleep(0.05)
  raise TimeoutError(f"no row at step {step} in {timeout}s")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_logs_the_uninterrupted_metrics(tmp_path):
  config_path = write_micro_config_file(
    tmp_path / "config.py",
    f"c.regimes = ({REGIME!r},)",
    "c.student.steps = 300",
    "c.eval_every = 10",
    "c.checkpoint_every = 25",
  )
  reference = str(tmp_path / "reference")
  experiment.run(load_config_file(config_path), reference)
  expected = _rows(reference)
  assert len(expected) == 31

  workdir = str(tmp_path / "run")
  # Pre-emption: SIGTERM checkpoints at the current step and exits with "retry" (75).
  run = _start(config_path, workdir)
  _wait_for_step(workdir, 60, run)
  run.send_signal(signal.SIGTERM)
  output, _ = run.communicate(timeout=300)
  assert run.returncode == errors.EX_TEMPFAIL == 75, output
  assert "pre-empted (SIGTERM); checkpointed at step" in output
  step = int(output.split("checkpointed at step ")[1].split(".")[0])
  assert os.path.isdir(os.path.join(workdir, REGIME, "checkpoints", str(step)))
  assert not os.path.exists(os.path.join(workdir, REGIME, "done.json"))

  # A kill at any moment (here: in the middle of training, possibly while saving).
  run = _start(config_path, workdir)
  _wait_for_step(workdir, step + 120, run)
  run.kill()
  run.wait()
  assert not os.path.exists(os.path.join(workdir, REGIME, "done.json"))

  run = _start(config_path, workdir)
  output, _ = run.communicate(timeout=600)
  assert run.returncode == 0, output
  assert _rows(workdir) == expected  # bit for bit, every logged metric of every step


@pytest.mark.parametrize(
  "finished, stopped",
  [("oracle calibration", "oracle samples"), ("evaluation sets", "offline dataset")],
)
def test_sigterm_between_training_loops_stops_the_next_sampling_phase(
  tmp_path, monkeypatch, finished, stopped
):
  """A SIGTERM that comes while stage 1 or an offline dataset samples stops the phase at its next
  sampler call (status 75) instead of at the next training step; the same call then finishes."""
  monkeypatch.setattr(preemption, "_received", False)
  previous = signal.getsignal(signal.SIGTERM)
  preemption.record_sigterm()  # as `python -m th_distill.main` does
  finish = progress.Phase.finish

  def finish_then_sigterm(phase, *args, **kwargs):
    finish(phase, *args, **kwargs)
    if phase.key == finished:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(progress.Phase, "finish", finish_then_sigterm)
  c = micro_config()
  c.regimes = ("offline",)
  workdir = str(tmp_path / "run")
  try:
    with pytest.raises(preemption.Preempted, match=f"{stopped}.*: pre-empted .SIGTERM. before"):
      experiment.run(c, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert preemption.Preempted.exit_code == errors.EX_TEMPFAIL
  assert not os.path.exists(os.path.join(workdir, "offline", "offline_dataset.npz"))
  monkeypatch.setattr(preemption, "_received", False)
  monkeypatch.setattr(progress.Phase, "finish", finish)
  assert "offline" in experiment.run(c, workdir)["regimes"]


def test_damaged_and_incomplete_checkpoints_are_skipped(tmp_path):
  directory = str(tmp_path / "checkpoints")
  checkpointer = checkpoints.RunCheckpointer(directory, max_to_keep=3)
  like = {"w": jnp.zeros(4), "step": jnp.zeros((), jnp.int32)}
  for step in (1, 2):
    checkpointer.save(step, {"w": jnp.full(4, float(step)), "step": jnp.asarray(step)})
  checkpointer.close()  # both saves finished (they are asynchronous)
  # The newest checkpoint loses its array data; a temporary folder is left by a killed save.
  for root, _, files in os.walk(os.path.join(directory, "2")):
    for name in files:
      if not name.startswith("_CHECKPOINT_METADATA"):
        os.remove(os.path.join(root, name))
  os.makedirs(os.path.join(directory, "3.orbax-checkpoint-tmp-123"))
  restored = checkpoints.RunCheckpointer(directory).restore_latest(like)
  assert int(restored["step"]) == 1 and float(restored["w"][0]) == 1.0
  shutil.rmtree(os.path.join(directory, "1"))
  assert checkpoints.RunCheckpointer(directory).restore_latest(like) is None
