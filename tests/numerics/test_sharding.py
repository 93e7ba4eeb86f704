"""The pipeline on 8 forced host devices gives the 1-device results, for three meshes.

The 8-device runs happen in a subprocess (`run_meshes.py`, with
XLA_FLAGS=--xla_force_host_platform_device_count=8), so the rest of the suite keeps one device.
Compared with the 1-device run of the same config: the oracle calibration, the sampled datasets
(token for token), and every metric of every logged step (float tolerance).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from th_distill import experiment
from th_distill.data.batch import BATCH_ARRAYS
from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)
from conftest import xla_flags  # noqa: E402
from run_meshes import REGIMES, sharding_config  # noqa: E402

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))
# Timings differ between runs by nature; everything else must match.
UNTIMED = ("time/", "throughput/")
# The detector's z-score divides metric differences by a ~1% noise scale: compared through the
# metrics it is computed from (and `detector/fired`), not with their tolerance.
DERIVED = ("detector/score",)


def run_on_8_devices(root, meshes):
  env = {
    **os.environ,
    "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"),
    "JAX_PLATFORMS": "cpu",
  }
  subprocess.run(
    [
      sys.executable,
      os.path.join(TESTS, "run_meshes.py"),
      str(root),
      *(",".join(map(str, m)) for m in meshes),
    ],
    check=True,
    env=env,
  )


def assert_same_run(reference, other):
  info_ref = checkpoints.read_json(os.path.join(reference, "stage1", "info.json"))
  info = checkpoints.read_json(os.path.join(other, "stage1", "info.json"))
  for key in ("logit_scale", "entropy"):
    np.testing.assert_allclose(info["oracle"][key], info_ref["oracle"][key], rtol=1e-5)
  np.testing.assert_allclose(
    info["teacher/golden/fkl@oracle_samples"],
    info_ref["teacher/golden/fkl@oracle_samples"],
    rtol=1e-4,
  )
  for name in (
    "stage1/oracle_data.npz",
    "stage1/eval_oracle.npz",
    "stage1/eval_teacher.npz",
    "offline_dataset.npz",
  ):
    ref, got = (checkpoints.load_arrays(os.path.join(d, name)) for d in (reference, other))
    for key in BATCH_ARRAYS:
      np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}:{key}")
  for regime in REGIMES:
    ref_rows, rows = (
      read_metrics(os.path.join(d, regime, "metrics.jsonl")) for d in (reference, other)
    )
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for ref_row, row in zip(ref_rows, rows):
      assert row.keys() == ref_row.keys()
      for key, value in ref_row.items():
        if not key.startswith(UNTIMED + DERIVED):
          np.testing.assert_allclose(
            row[key], value, rtol=2e-4, atol=1e-5, err_msg=f"{regime} step {row['step']} {key}"
          )


@pytest.mark.slow
def test_sharded_pipeline_matches_one_device(tmp_path):
  reference = str(tmp_path / "one_device")
  experiment.run(sharding_config((1, 1, 1)), reference)
  run_on_8_devices(tmp_path, MESHES)
  for mesh in MESHES:
    other = str(tmp_path / "x".join(map(str, mesh)))
    config = json.load(open(os.path.join(other, "config.json")))
    assert tuple(config["mesh"][axis] for axis in ("data", "fsdp", "model")) == mesh
    assert_same_run(reference, other)
    # The parameters really were split: the output layer [embed, vocab] over (fsdp, model).
    layout = json.load(open(os.path.join(other, "student_param_layout.json")))
    (embed, vocab), shard = layout["['logits_kernel']"]
    assert shard == [embed // mesh[1], vocab // mesh[2]]
