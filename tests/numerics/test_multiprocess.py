"""Two processes on localhost (`jax.distributed` over CPU, one device each) run the micro
pipeline to the metrics of a single process; only process 0 writes logs and reports."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAGS, write_micro_config_file

from th_distill import experiment
from th_distill.config import load_config_file
from th_distill.observing.metrics_io import read_metrics
from th_distill.partitioning import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from th_distill.rundir import checkpoints

REGIMES = ("offline", "online_student")
UNTIMED = ("time/", "throughput/")
# The detector's z-score divides metric differences by a ~1% noise scale: compared through the
# metrics it is computed from (and `detector/fired`), not with their tolerance.
DERIVED = ("detector/score",)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  config_path = write_micro_config_file(tmp_path / "config.py", f"c.regimes = {REGIMES!r}")
  reference = str(tmp_path / "one_process")
  experiment.run(load_config_file(str(config_path)), reference)

  workdir = str(tmp_path / "two_processes")
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = {
      **os.environ,
      ENV_COORDINATOR: f"localhost:{port}",
      ENV_NUM_PROCESSES: "2",
      ENV_PROCESS_ID: str(process_id),
      "JAX_PLATFORMS": "cpu",
    }
    env["XLA_FLAGS"] = " ".join(FAST_COMPILE_FLAGS)  # one device each
    processes.append(
      subprocess.Popen(
        [
          sys.executable,
          "-m",
          "th_distill.main",
          f"--config={config_path}",
          f"--workdir={workdir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output
  assert "process 0 of 2, 1 local / 2 global devices" in outputs[0]
  assert "process 1 of 2" in outputs[1]

  ref_info = checkpoints.read_json(os.path.join(reference, "stage1", "info.json"))
  info = checkpoints.read_json(os.path.join(workdir, "stage1", "info.json"))
  np.testing.assert_allclose(info["oracle"]["entropy"], ref_info["oracle"]["entropy"], rtol=1e-5)
  for regime in REGIMES:
    ref_rows, rows = (
      read_metrics(os.path.join(d, regime, "metrics.jsonl")) for d in (reference, workdir)
    )
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for ref_row, row in zip(ref_rows, rows):
      for key, value in ref_row.items():
        if not key.startswith(UNTIMED + DERIVED):
          np.testing.assert_allclose(
            row[key], value, rtol=2e-4, atol=1e-5, err_msg=f"{regime} step {row['step']} {key}"
          )
  for name in ("summary.json", "report.md", "config.json"):
    assert os.path.exists(os.path.join(workdir, name))
