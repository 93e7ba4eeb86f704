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
