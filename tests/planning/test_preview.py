"""A run whose plan needs more memory per device than a device has stops before any compute,
naming both figures and the settings to try, unless `mesh.ignore_memory_estimate`."""

import logging
import os

import pytest

from th_distill import experiment
from th_distill.planning import preview


def test_a_plan_over_the_device_memory_stops_naming_the_figures_and_the_settings():
  with pytest.raises(
    preview.OverMemory,
    match=r"the distill_step needs about 269\.9 GiB per device, more than the 16\.0 GiB a device "
    r"has: .*--config\.frozen_dtype=bfloat16.*--config\.mesh\.ignore_memory_estimate=True runs",
  ):
    preview.check_memory("distill_step", 269.9, 16.0, ignore=False)
  preview.check_memory("distill_step", 15.0, 16.0, ignore=False)
  preview.check_memory("distill_step", 269.9, None, ignore=False)  # unknown: not checked


def test_the_ignore_key_goes_on_with_a_warning(caplog):
  with caplog.at_level(logging.WARNING):
    preview.check_memory("distill_step", 269.9, 16.0, ignore=True)
  assert "going on (mesh.ignore_memory_estimate = True)" in caplog.text


def test_a_run_over_memory_stops_before_stage1(micro, tmp_path, monkeypatch):
  monkeypatch.setattr(preview, "device_gib", lambda device: 1e-6)
  with pytest.raises(preview.OverMemory, match="more than the 0.0 GiB a device has"):
    experiment.run(micro, str(tmp_path))
  assert not os.path.exists(tmp_path / "stage1")


def test_regimes_side_by_side_count_their_steps_together_but_the_frozen_models_once(micro):
  from th_distill.config.run_config import RunConfig
  from th_distill.planning import memory

  step = memory.program_estimates(RunConfig.from_config(micro), (1, 1, 1))["distill_step"]
  three = memory.side_by_side(step, 3)
  frozen = step["teacher params"] + step["oracle params"]
  for total in ("total", "total, all gathered"):
    assert three[total] == pytest.approx(3 * (step[total] - frozen) + frozen)
  assert three["student params + grads + Adam"] == 3 * step["student params + grads + Adam"]
  assert three["teacher params"] == step["teacher params"]
  assert memory.side_by_side(step, 1) == step


def test_the_plan_stops_a_run_whose_regimes_side_by_side_do_not_fit(micro, tmp_path, monkeypatch):
  from th_distill.config.run_config import RunConfig
  from th_distill.planning import memory

  micro.regimes = ("offline", "online_teacher", "online_student", "mixture")
  step = memory.program_estimates(RunConfig.from_config(micro), (1, 1, 1))["distill_step"]
  alone, together = step["total"], memory.side_by_side(step, 4)["total"]
  monkeypatch.setattr(preview, "device_gib", lambda device: (alone + together) / 2)
  with pytest.raises(
    preview.OverMemory,
    match=r"the distill_step x 4 \(regimes side by side\) needs .*: run the regimes one at a "
    r"time \(--config\.mesh\.regimes_at_once=1\), shard it",
  ):
    experiment.run(micro, str(tmp_path / "at_once"))
  micro.mesh.regimes_at_once = 1  # one at a time: each step fits
  experiment.run(micro, str(tmp_path / "one_at_a_time"))
