"""Helpers of the tests that resume a cut run: its rows without timings, and a run directory
as a kill right after one of its checkpoints leaves it."""

import os
import shutil

from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints

UNTIMED = ("time/", "throughput/")


def untimed_rows(workdir, regime):
  """The metric rows of `regime` in `workdir`, timings left out."""
  rows = read_metrics(os.path.join(workdir, regime, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if not k.startswith(UNTIMED)} for r in rows]


def run_and_read(config, workdir):
  """Runs `config` into `workdir`; {regime: its rows without timings} for each of its regimes."""
  from th_distill import experiment

  experiment.run(config, workdir)
  return {regime: untimed_rows(workdir, regime) for regime in config.regimes}


def cut_after_checkpoint(workdir, regime, step):
  """The run of `regime` as a kill after the checkpoint of `step` leaves it: later checkpoints,
  rows and the done marker gone (anything else it kept, e.g. `best_predicted/`, still there)."""
  run_dir = os.path.join(workdir, regime)
  os.remove(os.path.join(run_dir, "done.json"))
  for name in os.listdir(os.path.join(run_dir, "checkpoints")):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(run_dir, "checkpoints", name))
  rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    f.writelines(checkpoints.json.dumps(r) + "\n" for r in rows if r["step"] < step)
