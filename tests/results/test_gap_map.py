"""The golden rise against the teacher-student gap (`results.gap_map`) on hand-made numbers."""

import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from configs.studies import gap_map as config_file
from th_distill import detection, study
from th_distill.config.run_config import RunConfig
from th_distill.observing.metric_names import GOLDEN, PROXY, TRAIN_PROXY
from th_distill.results import gap_map, gap_map_report

STEPS = np.arange(0, 700, 100)
U_SHAPE = [2.0, 1.6, 1.5, 1.55, 1.6, 1.65, 1.7]  # min 1.5 @ 200, +13.3 % at the end
FALLING = [1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.60]


def _rows(golden, proxy=FALLING):
  return [
    {"step": int(t), GOLDEN: g, PROXY: p, TRAIN_PROXY: 1.0} for t, g, p in zip(STEPS, golden, proxy)
  ]


def _point(
  setting, gap, rise, rose, regime="offline", seed=20, trend=None, rising=None, onset=None
):
  return {
    "setting": setting,
    "regime": regime,
    "length": "2x",
    "steps": 4000,
    "seed": seed,
    "onset_step": onset,
    "gap": gap,
    "rise_pct": rise,
    "trend": trend,
    "rose": rose,
    "rising": rose if rising is None else rising,
    "passed": None if gap is None else gap > 0,
  }


def test_a_run_is_read_at_half_and_at_its_full_length():
  settings = detection.DetectorSettings()
  points = gap_map.run_points(_rows(U_SHAPE), 600, 1.55, 5.0, settings, PROXY, unit=300)
  half, full = points
  assert (half["length"], half["steps"], full["length"], full["steps"]) == ("1x", 300, "2x", 600)
  assert half["gap"] == full["gap"] == pytest.approx(0.05)  # min 1.5 @ 200 in both
  assert half["pass_step"] == full["pass_step"] == 200
  assert half["rise_pct"] == pytest.approx(100 * 0.05 / 1.5)
  assert (half["doublings"], full["doublings"]) == pytest.approx((np.log2(1.5), np.log2(3)))
  assert full["rise_pct"] == pytest.approx(100 * 0.2 / 1.5)
  assert not half["rose"] and not half["rising"]  # one evaluation after the minimum: no trend
  assert full["rising"]
  assert full["rose"] and full["outcome"] == "teacher_hacking" and full["passed"]
  never = gap_map.run_points(_rows(U_SHAPE), 600, 1.2, 5.0, settings, PROXY, unit=300)[1]
  assert never["gap"] == pytest.approx(-0.3) and not never["passed"]
  assert never["pass_step"] is None and never["rose"]
  unfinished = gap_map.run_points(_rows(U_SHAPE)[:5], 600, 1.55, 5.0, settings, PROXY, unit=300)
  assert [p["length"] for p in unfinished] == ["1x"]  # step 400 < 600: no 2x point
  longer = gap_map.run_points(_rows(U_SHAPE), 400, 1.55, 5.0, settings, PROXY, unit=100)
  assert [(p["length"], p["steps"]) for p in longer] == [("1x", 100), ("2x", 200), ("4x", 400)]


def test_the_trend_onset_is_the_step_from_which_the_rise_stays_significant():
  steps = np.arange(0, 2100, 100)
  # Falls to its minimum at step 500, then rises 2% per doubling with a little noise.
  noise = 0.001 * np.sin(np.arange(len(steps)) * 2.1)
  golden = np.where(
    steps <= 500, 1.5 - steps / 2000, 1.25 * (1 + 0.02 * np.log2(np.maximum(steps, 1) / 500))
  )
  golden = golden + noise
  onset = gap_map.trend_onset_step(steps, golden)
  rising = [
    gap_map.trend.trend_after_minimum(steps[:end], golden[:end]).rising
    for end in range(1, len(steps) + 1)
  ]
  first_for_good = next(i for i in range(len(steps)) if all(rising[i:]))
  assert onset == steps[first_for_good] and 500 < onset < 2000
  assert gap_map.trend_onset_step(steps, 1.5 - steps / 4000) is None  # falls throughout
  # A rise that falls back below its minimum at the end is not rising for good.
  assert gap_map.trend_onset_step(steps, np.append(golden[:-1], 1.0)) is None


def test_the_seed_bootstrap_resamples_whole_seeds():
  points = []
  for seed, offset in enumerate((0.0, 3.0, -2.0, 1.0, 5.0)):
    points += [
      {"seed": seed, "gap": g, "rise_pct": offset + 10.0 * g} for g in (-0.2, 0.0, 0.1, 0.3)
    ]
  low, high = gap_map.seed_bootstrap_slope(points, "gap", "rise_pct")
  assert low == pytest.approx(10.0) and high == pytest.approx(10.0)  # every seed's slope is 10
  points.append({"seed": 9, "gap": 0.5, "rise_pct": -20.0})  # one seed against the line
  low, high = gap_map.seed_bootstrap_slope(points, "gap", "rise_pct")
  assert low < 0 and high == pytest.approx(10.0)  # resamples without seed 9 give 10
  assert gap_map.seed_bootstrap_slope(points[:8], "gap", "rise_pct") is None  # two seeds


def test_the_rise_is_fitted_against_each_candidate_predictor():
  rng = np.random.default_rng(1)
  points = [
    {
      "gap": float(g),
      "start_gap": float(s),
      "teacher_golden": 0.7,
      "student_start": float(0.7 - s),
      "golden_min": float(0.7 - g),
      "doublings": 2.0,
      "rise_pct": float(4.0 + 20.0 * s),
    }
    for g, s in zip(rng.uniform(-0.1, 0.3, 8), rng.uniform(-0.3, 0.1, 8))
  ]
  fits = gap_map.predictors(points)
  assert set(fits) == set(gap_map.PREDICTORS)
  assert fits["start_gap"]["r2"] == pytest.approx(1.0) and fits["start_gap"][
    "slope"
  ] == pytest.approx(20.0)
  assert fits["student_start"]["slope"] == pytest.approx(-20.0)
  assert fits["gap"]["r2"] < 0.9 and fits["teacher_golden"] == fits["doublings"] == {"n": 8}


def test_onsets_compare_online_with_offline_seed_by_seed():
  points = [
    _point("a", 0.2, 8.0, True, "offline", 20, onset=800),
    _point("a", 0.2, 3.0, True, "online_teacher", 20, onset=2400),
    _point("a", 0.2, 8.0, True, "offline", 21, onset=900),
    _point("a", 0.2, 1.0, False, "online_teacher", 21, onset=None),
    _point("a", 0.1, 1.0, False, "offline", 22, onset=None),
    _point("a", 0.1, 1.0, False, "online_teacher", 22, onset=None),
    _point("a", 0.2, 8.0, True, "offline", 23, onset=700),  # online read at 1x only: it counts
    {**_point("a", 0.2, 8.0, True, "online_teacher", 23, onset=100), "length": "1x", "steps": 2000},
    # A run read at 1x, 2x and 4x: its onset is the longest read's.
    {**_point("b", 0.2, 8.0, True, "offline", 20, onset=None), "length": "1x", "steps": 2000},
    _point("b", 0.2, 8.0, True, "offline", 20, onset=3000),
    {**_point("b", 0.2, 8.0, True, "offline", 20, onset=2500), "length": "4x", "steps": 8000},
  ]
  o = gap_map.onsets(points)["a"]
  assert o["onset_steps"]["offline"] == {20: 800, 21: 900, 22: None, 23: 700}
  assert (o["offline_turned"]["k"], o["offline_turned"]["n"]) == (3, 4)
  assert (o["online_turned"]["k"], o["online_turned"]["n"]) == (2, 4)
  assert (o["online_later_or_never"]["k"], o["online_later_or_never"]["n"]) == (2, 3)  # not 23
  assert gap_map.onsets(points)["b"]["onset_steps"] == {"offline": {20: 2500}}


def test_the_line_and_its_interval_match_numpy_least_squares():
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.3, 0.3, 12)
  y = 2.0 + 10.0 * x + rng.normal(0, 0.5, 12)
  fit = gap_map.fit_line(x, y)
  (slope, intercept), cov = np.polyfit(x, y, 1, cov=True)
  half = stats.t.ppf(0.975, 10) * np.sqrt(np.diag(cov))
  assert (fit["slope"], fit["intercept"]) == pytest.approx((slope, intercept))
  assert fit["slope_ci95"] == pytest.approx([slope - half[0], slope + half[0]])
  assert fit["intercept_ci95"] == pytest.approx([intercept - half[1], intercept + half[1]])
  assert fit["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
  with_nan = gap_map.fit_line([*x, np.nan, 1.0], [*y, 3.0, np.nan])
  assert with_nan["n"] == 12 and with_nan["slope"] == pytest.approx(slope)
  assert gap_map.fit_line([0.1, 0.2], [1.0, 2.0]) == {"n": 2}
  assert gap_map.fit_line([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]) == {"n": 3}


def test_counts_of_rise_without_pass_and_pass_without_rise_carry_exact_intervals():
  points = [
    _point("a", 0.2, 8.0, True),
    _point("a", 0.1, 1.0, False),
    _point("b", -0.1, 6.0, True),
    *[_point("c", -0.2, 0.5, False) for _ in range(7)],
    _point("d", None, 9.0, True),  # teacher unknown: left out
  ]
  c = gap_map.counts(points)
  assert (c["rise_without_pass"]["k"], c["rise_without_pass"]["n"]) == (1, 8)
  assert (c["pass_without_rise"]["k"], c["pass_without_rise"]["n"]) == (1, 2)
  assert (c["rises"]["k"], c["rises"]["n"]) == (2, 10)
  # Clopper-Pearson 1 of 8 (exact beta quantiles) and 0 of n (1 - 0.025^(1/n)).
  low, high = c["rise_without_pass"]["ci95"]
  assert low == pytest.approx(stats.beta.ppf(0.025, 1, 8))
  assert high == pytest.approx(stats.beta.ppf(0.975, 2, 7))
  points[1]["rising"] = True  # a small rise with a rising trend: no pass without one
  trending = gap_map.counts(points, "rising")
  assert (trending["pass_without_rise"]["k"], trending["pass_without_rise"]["n"]) == (0, 2)
  none = gap_map.proportion(0, 10)
  assert none["ci95"] == pytest.approx([0.0, 1 - 0.025**0.1])
  assert gap_map.proportion(0, 0) == {"k": 0, "n": 0, "ci95": None}


def test_diversity_settings_are_read_against_the_others_line_at_equal_gap():
  others = [_point("t", g, 10.0 * g + 1.0, g > 0) for g in (-0.2, -0.1, 0.0, 0.1, 0.2)]
  diverse = [
    _point("k4", g, 10.0 * g + 1.0 + r, g > 0, seed=s)
    for s, (g, r) in enumerate(((0.05, 1.0), (0.1, 2.0), (0.15, 3.0)))
  ]
  d = gap_map.at_equal_gap(others + diverse, ("k4",))
  assert d["line_n"] == 5
  assert [r["residual"] for r in d["residuals"]] == pytest.approx([1.0, 2.0, 3.0])
  half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
  assert d["mean"] == pytest.approx(2.0)
  assert d["mean_ci95"] == pytest.approx([2.0 - half, 2.0 + half])
  assert gap_map.at_equal_gap(others, ("k4",))["mean"] is None


def test_the_analysis_groups_regimes_and_lengths_and_writes_its_report(tmp_path):
  runs, teacher = [], {}
  curves = {"near": (U_SHAPE, 1.55), "worse": (U_SHAPE, 1.9), "better": ([2.0, *[1.6] * 6], 1.2)}
  for seed in (20, 21):
    for setting, (golden, level) in curves.items():
      for regime in ("offline", "online_teacher"):
        path = tmp_path / f"{setting}_{regime}_{seed}.jsonl"
        noisy = np.asarray(golden) * (1 + 0.01 * seed - 0.2)
        path.write_text("".join(json.dumps(r) + "\n" for r in _rows(noisy.tolist())))
        runs.append(dict(setting=setting, regime=regime, seed=seed, path=str(path), steps=600))
        teacher[str(path)] = level
  (tmp_path / "report.md").write_text("# study\n")
  result = gap_map_report.write_gap_map(
    str(tmp_path), runs, teacher, 5.0, detection.DetectorSettings(), PROXY, ("near",), 300
  )
  assert len(result["points"]) == 24
  assert set(result["analysis"]["groups"]) == {
    f"{r} {n}" for r in ("offline", "online_teacher") for n in ("1x", "2x")
  }
  offline = result["analysis"]["groups"]["offline 2x"]
  assert offline["rise_vs_gap"]["n"] == 6 and offline["rise_vs_gap_passed"]["n"] == 4
  text = (tmp_path / "report.md").read_text()
  assert (
    text.startswith("# study\n") and "## The golden rise against the teacher-student gap" in text
  )
  assert "| better | offline | 2x | 20, 21 |" in text
  assert (tmp_path / "gap_map.json").exists() and (
    tmp_path / gap_map_report.FIGURE
  ).stat().st_size > 0


def test_the_map_config_holds_its_first_pass_and_names_its_seeds():
  def directories(options):
    runs = study.run_configs(config_file.get_config(options))
    return {study.run_dir("W", RunConfig.from_config(c)) for _, _, c in runs}

  first, full, extended = directories("first"), directories(""), directories("extended")
  assert len(first) == 6 and len(full) == 30 and len(extended) == 80
  assert first <= extended and full <= extended
  assert not set(config_file.SEEDS) & set(config_file.CALIBRATION_SEEDS)
  assert config_file.get_config("extended").diversity == config_file.DIVERSITY_SETTINGS
  part = directories("t1500,strong")
  assert part <= full and len(part) == 2 * len(config_file.SEEDS)
  assert directories("t900") <= extended - full
  with pytest.raises(ValueError, match="gap_map.py:second"):
    config_file.get_config("second")


@pytest.mark.parametrize("options", ["", "first", "t1500"])
def test_the_map_config_names_an_arm_of_its_own_as_reference(options):
  config = config_file.get_config(options)
  regimes = config.base.regimes
  arms = {
    study.arm_label(v, r, len(config.variants), set(regimes))
    for v in config.variants
    for r in regimes
  }
  assert config.reference in arms


def test_the_map_in_docs_is_the_analysis_of_its_kept_points():
  """docs/studies.md's map tables are what `gap_map_report` writes from docs/data/gap_map.json's
  points, and the kept analysis is `analyse` of them (others can check both)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  kept = json.loads((root / "docs" / "data" / "gap_map.json").read_text())
  analysis = gap_map.analyse(kept["points"], kept["diversity"])
  assert json.loads(json.dumps(analysis)) == kept["analysis"]
  text = (root / "docs" / "studies.md").read_text()
  written = [
    *gap_map_report.table(kept["points"])[2:],
    *gap_map_report.analysis_lines(kept["analysis"], kept["diversity"])[2:-2],
    *gap_map_report.predictor_lines(kept["analysis"])[2:],
    *gap_map_report.onset_lines(kept["analysis"]["onsets"])[2:],
  ]
  missing = [line for line in written if line not in text]
  assert not missing, missing[:3]
