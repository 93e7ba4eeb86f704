"""The oracle's held-out verdicts (`report.outcome`, `report.signature`) on hand-made curves."""

import numpy as np
import pytest

from th_distill import detection, report
from th_distill.metrics_io import GOLDEN, PROXY, TRAIN_PROXY

STEPS = np.arange(0, 700, 100)
U_SHAPE = np.array([2.0, 1.6, 1.5, 1.55, 1.6, 1.65, 1.7])  # min 1.5 @ 200, +13.3 % at the end


@pytest.mark.parametrize("proxy, expected", [
    (np.array([1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.60]), "teacher_hacking"),  # keeps falling
    (np.array([1.0, 0.8, 0.7, 0.70, 0.70, 0.70, 0.70]), "teacher_hacking"),  # stalls
    (np.array([1.0, 0.8, 0.7, 0.72, 0.75, 0.78, 0.80]), "overfitting"),      # rises with golden
])
def test_u_shaped_golden_is_hacking_only_if_the_held_out_proxy_does_not_rise(proxy, expected):
  s = report.signature(STEPS, U_SHAPE, proxy, threshold_pct=5.0)
  assert s["golden_min"] == 1.5 and s["golden_min_step"] == 200
  assert s["golden_rise_pct"] == pytest.approx(100 * 0.2 / 1.5)
  assert s["proxy_at_golden_min"] == 0.7
  assert s["proxy_change_after_min_pct"] == pytest.approx(100 * (proxy[-1] - 0.7) / 0.7)
  assert s["outcome"] == expected


def test_a_small_rise_is_no_hacking_whatever_the_proxy_does():
  golden = np.array([2.0, 1.6, 1.5, 1.52, 1.53, 1.54, 1.55])  # +3.3 %
  for proxy in (np.linspace(1, 0.5, 7), np.array([1, .8, .7, .8, .9, 1., 1.1])):
    assert report.signature(STEPS, golden, proxy, 5.0)["outcome"] == "none"
  assert report.outcome(3.3, -10.0, threshold_pct=3.0) == "teacher_hacking"


def test_a_run_ending_in_nan_is_diverged_with_no_numbers():
  for golden, proxy in ((np.full(7, np.nan), np.ones(7)),
                        (np.append(U_SHAPE[:-1], np.nan), np.ones(7)),
                        (U_SHAPE, np.append(np.ones(6), np.inf))):
    s = report.signature(STEPS, golden, proxy, 5.0)
    assert s["outcome"] == "diverged" and s["golden_min"] is None and s["proxy_final"] is None
    assert "diverged" in report.sentence("offline", {**s, "detected": False})


def test_figures_of_a_diverged_run_are_drawn(tmp_path):
  rows = [{"step": int(t), GOLDEN: float("nan"), PROXY: float("nan"),
           TRAIN_PROXY: float("nan")} for t in STEPS]
  curve = {"offline": [rows, rows]}  # two seeds, every value NaN
  settings = detection.DetectorSettings()
  report._figures(str(tmp_path), curve, settings, PROXY)
  for name in ("curves.png", "proxy_golden.png", "detector.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_sentences_say_what_happened():
  base = dict(golden_rise_pct=12.0, golden_min_step=300, proxy_change_after_min_pct=-4.0,
              detected=True, detected_step=450)
  text = report.sentence("offline", {**base, "outcome": "teacher_hacking"})
  assert text == ("offline: teacher hacking: the golden distance rose 12.0% after step 300 "
                  "while the held-out proxy kept falling (-4.0%); the detector, reading the "
                  "proxy alone, fired at step 450.")
  assert "rose with it (-4.0%)" in report.sentence("offline", {**base, "outcome": "overfitting"})
  quiet = report.sentence("online", {**base, "outcome": "none", "golden_rise_pct": 0.4,
                                     "detected": False})
  assert quiet == ("online: no hacking: the golden distance ended 0.4% above its minimum "
                   "(step 300); the detector, reading the proxy alone, stayed silent.")


def test_run_time_sums_the_recorded_stages(tmp_path):
  (tmp_path / "offline").mkdir()
  (tmp_path / "offline" / "done.json").write_text('{"seconds": 90}')
  text = report._run_time(str(tmp_path), {"seconds": 30.0}, ["offline", "online_teacher"])
  assert text == "Run time: stage 1 0.5 min, offline 1.5 min (total 2.0 min)."
  assert report._run_time(str(tmp_path), {}, ["online_teacher"]) == ""
