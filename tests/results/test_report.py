"""The oracle's held-out verdicts (`summaries`) on hand-made curves, and the report's text and
figures (`report`)."""

import numpy as np
import pytest

from th_distill import detection
from th_distill.observing import metric_names
from th_distill.observing.metric_names import GOLDEN, PROXY, TRAIN_PROXY
from th_distill.results import figures, report, summaries

STEPS = np.arange(0, 700, 100)
U_SHAPE = np.array([2.0, 1.6, 1.5, 1.55, 1.6, 1.65, 1.7])  # min 1.5 @ 200, +13.3 % at the end


@pytest.mark.parametrize(
  "proxy, expected",
  [
    (np.array([1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.60]), "teacher_hacking"),  # keeps falling
    (np.array([1.0, 0.8, 0.7, 0.70, 0.70, 0.70, 0.70]), "teacher_hacking"),  # stalls
    (np.array([1.0, 0.8, 0.7, 0.72, 0.75, 0.78, 0.80]), "overfitting"),  # rises with golden
  ],
)
def test_u_shaped_golden_is_hacking_only_if_the_held_out_proxy_does_not_rise(proxy, expected):
  s = summaries.signature(STEPS, U_SHAPE, proxy, threshold_pct=5.0)
  assert s["golden_min"] == 1.5 and s["golden_min_step"] == 200
  assert s["golden_rise_pct"] == pytest.approx(100 * 0.2 / 1.5)
  assert s["proxy_at_golden_min"] == 0.7
  assert s["proxy_change_after_min_pct"] == pytest.approx(100 * (proxy[-1] - 0.7) / 0.7)
  assert s["outcome"] == expected


def test_a_small_rise_is_no_hacking_whatever_the_proxy_does():
  golden = np.array([2.0, 1.6, 1.5, 1.52, 1.53, 1.54, 1.55])  # +3.3 %
  for proxy in (np.linspace(1, 0.5, 7), np.array([1, 0.8, 0.7, 0.8, 0.9, 1.0, 1.1])):
    assert summaries.signature(STEPS, golden, proxy, 5.0)["outcome"] == "none"
  assert summaries.outcome(3.3, -10.0, threshold_pct=3.0, rising=True) == "teacher_hacking"


def test_a_run_ending_in_nan_is_diverged_with_no_numbers():
  for golden, proxy in (
    (np.full(7, np.nan), np.ones(7)),
    (np.append(U_SHAPE[:-1], np.nan), np.ones(7)),
    (U_SHAPE, np.append(np.ones(6), np.inf)),
  ):
    s = summaries.signature(STEPS, golden, proxy, 5.0)
    assert s["outcome"] == "diverged" and s["golden_min"] is None and s["proxy_final"] is None
    assert "diverged" in report.sentence("offline", {**s, "detected": False})


def test_figures_of_a_diverged_run_are_drawn(tmp_path):
  rows = [
    {"step": int(t), GOLDEN: float("nan"), PROXY: float("nan"), TRAIN_PROXY: float("nan")}
    for t in STEPS
  ]
  curve = {"offline": [rows, rows]}  # two seeds, every value NaN
  settings = detection.DetectorSettings()
  figures.write_figures(str(tmp_path), curve, settings, PROXY)
  for name in ("curves.png", "proxy_golden.png", "detector.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_sentences_say_what_happened():
  base = dict(
    golden_rise_pct=12.0,
    golden_min_step=300,
    proxy_change_after_min_pct=-4.0,
    detected=True,
    detected_step=450,
  )
  text = report.sentence("offline", {**base, "outcome": "teacher_hacking"})
  assert text == (
    "offline: teacher hacking: the golden distance rose 12.0% after step 300 "
    "while the held-out proxy kept falling (-4.0%); the detector, reading the "
    "proxy alone, fired at step 450."
  )
  assert "rose with it (-4.0%)" in report.sentence("offline", {**base, "outcome": "overfitting"})
  quiet = report.sentence(
    "online", {**base, "outcome": "none", "golden_rise_pct": 0.4, "detected": False}
  )
  assert quiet == (
    "online: no hacking: the golden distance ended 0.4% above its minimum "
    "(step 300); the detector, reading the proxy alone, stayed silent."
  )
  flat = report.sentence(
    "online",
    {
      **base,
      "outcome": "none",
      "golden_rise_pct": 0.4,
      "detected": False,
      "golden_trend_pct_per_doubling": 0.1,
      "golden_trend_ci95": [-0.52, 0.71],
    },
  )
  assert "(step 300), trend +0.10 [-0.52, +0.71] % per doubling of the steps;" in flat


def test_run_time_is_the_wall_time_of_stages_that_ran_side_by_side(tmp_path):
  # stage 1 over [1000, 1030] s; the two regimes side by side over [1040, 1130] and [1050, 1120].
  for regime, record in (
    ("offline", '{"seconds": 90, "finished_at": 1130}'),
    ("online_teacher", '{"seconds": 70, "finished_at": 1120}'),
  ):
    (tmp_path / regime).mkdir()
    (tmp_path / regime / "done.json").write_text(record)
  stage1 = {"seconds": 30.0, "finished_at": 1030.0}
  text = report.run_time_sentence(str(tmp_path), stage1, ["offline", "online_teacher", "mixture"])
  assert text == (
    "Run time: stage 1 0.5 min, offline 1.5 min, online_teacher 1.2 min (wall time 2.0 min)."
  )
  assert report.run_time_sentence(str(tmp_path), {}, ["mixture"]) == ""


def test_wall_time_counts_overlaps_once_and_gaps_not_at_all():
  spans = [
    {"seconds": 10.0, "finished_at": 110.0},  # [100, 110]
    {"seconds": 10.0, "finished_at": 115.0},  # [105, 115]: 5 s more
    {"seconds": 2.0, "finished_at": 114.0},  # inside: nothing more
    {"seconds": 20.0, "finished_at": 520.0},  # [500, 520] after a gap: 20 s
  ]
  assert report.wall_seconds(spans) == 35.0
  # Records written before `finished_at` was recorded: taken as one after another.
  assert report.wall_seconds([{"seconds": 30.0}, {"seconds": 90.0}]) == 120.0
  assert report.wall_seconds([]) == 0.0


@pytest.mark.parametrize(
  "rise, change, rising, fell, expected",
  [
    (5.0, 0.0, True, True, "teacher_hacking"),  # rose by exactly the threshold; proxy stalled
    (5.0, 1e-9, True, True, "overfitting"),  # the proxy rose, however little
    (4.999, -50.0, True, True, "none"),  # just below the threshold, whatever the proxy did
    (float("nan"), -50.0, True, True, "none"),
    (20.0, -50.0, False, True, "none"),  # a large rise whose trend holds zero
    (20.0, -50.0, True, False, "regression"),  # never below its start: pulled to a worse teacher
    (20.0, 10.0, True, False, "regression"),
    (20.0, -50.0, False, False, "regression"),  # from the start: no selected minimum to doubt
    (4.0, -50.0, True, False, "none"),
  ],
)
def test_the_verdict_at_its_boundaries(rise, change, rising, fell, expected):
  assert summaries.outcome(rise, change, 5.0, rising, fell) == expected


def _noisy(steps, level, rng, scale=0.01):
  """A curve falling to `level` [T] with 1% iid noise."""
  return (level + 0.3 * np.exp(-steps / 150.0)) * (1 + scale * rng.normal(size=len(steps)))


def test_flat_noisy_curves_are_not_rising_but_rises_and_u_shapes_are():
  steps = np.array(sorted(set(range(0, 2001, 100)) | {1, 2, 4, 8, 16, 32, 64}))
  rng = np.random.default_rng(0)
  rising = 0
  for _ in range(200):
    s = summaries.signature(steps, _noisy(steps, 0.6, rng), np.linspace(1, 0.5, len(steps)), 5.0)
    rising += s["golden_trend_rising"]
    assert s["outcome"] == "none" or s["golden_rise_pct"] >= 5.0
  assert rising <= 10  # a one-sided 2.5% test, read after the selected minimum: <= 5% of 200
  # A U: down to 0.6 by step 300, then +3% per doubling of the steps.
  u = 0.6 * (1 + 0.03 * np.log2(np.maximum(steps, 300) / 300)) + 0.3 * np.exp(-steps / 60.0)
  for seed in range(5):
    noisy = u * (1 + 0.01 * np.random.default_rng(seed).normal(size=len(steps)))
    s = summaries.signature(steps, noisy, np.linspace(1, 0.5, len(steps)), 5.0)
    assert s["golden_trend_rising"] and s["outcome"] == "teacher_hacking", s
    assert 1.5 < s["golden_trend_pct_per_doubling"] < 4.5
  # Rising from the first evaluation on: regression, not hacking.
  climb = 0.6 * (1 + 0.05 * np.log2(np.maximum(steps, 1)))
  s = summaries.signature(steps, climb, np.linspace(1, 0.5, len(steps)), 5.0)
  assert s["golden_min_step"] == 0 and s["outcome"] == "regression"
  assert s["golden_start"] == pytest.approx(0.6)


def test_a_run_summary_sets_the_teacher_beside_the_student():
  rows = _rows(**{GOLDEN: U_SHAPE, PROXY: np.linspace(1, 0.5, 7), TRAIN_PROXY: np.ones(7)})
  settings = detection.DetectorSettings()
  s = summaries.summarize_run(rows, 5.0, settings, PROXY, teacher_golden=1.2)
  assert s["teacher_golden"] == 1.2 and s["student_init_golden"] == 2.0
  assert s["teacher_better_at_start"] and s["teacher_better_throughout"]
  s = summaries.summarize_run(rows, 5.0, settings, PROXY, teacher_golden=1.55)
  assert s["teacher_better_at_start"] and not s["teacher_better_throughout"]
  s = summaries.summarize_run(rows, 5.0, settings, PROXY)
  assert s["teacher_golden"] is None and s["teacher_better_at_start"] is None
  assert "worse than the student's start" in report.teacher_sentence(2.1, 2.0)
  assert "worth distilling from" in report.teacher_sentence(1.2, 2.0)


FALLING_PROXY = np.linspace(1, 0.5, 7)  # floor 0.5 @ 600, where golden is 1.7


@pytest.mark.parametrize(
  "teacher, gap, pass_step, floor_gap, words",
  [
    (
      1.55,
      0.05,
      200,
      -0.15,
      "passed its teacher at step 200 (teacher golden 1.550) and reached "
      "1.500, 0.050 below it; at the held-out proxy's floor (step 600) its golden was 0.150 above",
    ),
    (
      2.1,
      0.6,
      0,
      0.4,
      "was better than its teacher from its start (teacher golden 2.100) and "
      "reached 1.500, 0.600 below it; at the held-out proxy's floor (step 600) its golden was "
      "0.400 below",
    ),
    (
      1.2,
      -0.3,
      None,
      -0.5,
      "never passed its teacher: its best golden 1.500 stayed 0.300 above "
      "the teacher's 1.200; at the held-out proxy's floor (step 600) its golden was 0.500 above",
    ),
  ],
)
def test_a_run_summary_says_whether_and_when_the_student_passed_its_teacher(
  teacher, gap, pass_step, floor_gap, words
):
  rows = _rows(**{GOLDEN: U_SHAPE, PROXY: FALLING_PROXY, TRAIN_PROXY: np.ones(7)})
  s = summaries.summarize_run(rows, 5.0, detection.DetectorSettings(), PROXY, teacher)
  assert s["teacher_gap_at_golden_min"] == pytest.approx(gap)
  assert s["teacher_pass_step"] == pass_step
  assert (s["proxy_floor"], s["proxy_floor_step"], s["golden_at_proxy_floor"]) == (0.5, 600, 1.7)
  assert s["teacher_gap_at_proxy_floor"] == pytest.approx(floor_gap)
  assert words in report.pass_sentence(s)


def test_the_gap_is_unknown_without_the_teacher_and_skips_non_finite_evaluations():
  golden = np.append(U_SHAPE[:-1], np.nan)
  proxy = np.array([1.0, 0.8, np.nan, 0.4, 0.6, 0.7, 0.3])
  gap = summaries.teacher_gap(STEPS, golden, proxy, None)
  assert gap["teacher_gap_at_golden_min"] is None and gap["teacher_pass_step"] is None
  assert (gap["proxy_floor"], gap["proxy_floor_step"]) == (0.4, 300)  # NaN rows left out
  assert report.pass_sentence({**gap, "teacher_golden": None}) == ""
  gap = summaries.teacher_gap(STEPS, golden, proxy, 1.58)
  assert gap["teacher_gap_at_golden_min"] == pytest.approx(0.08)  # the proxy's NaN changes none
  assert gap["teacher_pass_step"] == 200
  assert gap["teacher_gap_at_proxy_floor"] == pytest.approx(0.03)  # golden 1.55 @ 300
  assert summaries.teacher_gap(STEPS, np.full(7, np.nan), proxy, 1.0)["proxy_floor"] is None


def _rows(**curves):
  """Metrics rows over STEPS holding the given curves {name: values [T]}."""
  return [
    {"step": int(t), **{name: float(v[i]) for name, v in curves.items()}}
    for i, t in enumerate(STEPS)
  ]


def test_a_run_summary_reads_every_view_it_has_from_its_own_curves():
  falling = np.array([1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.60])
  rising = np.array([1.0, 0.8, 0.7, 0.72, 0.75, 0.78, 0.80])
  flat = np.array([2.0, 1.6, 1.5, 1.51, 1.51, 1.52, 1.52])  # +1.3 %
  rkl, rkl_seq = metric_names.SIGNATURE_VIEWS["rkl"], metric_names.SIGNATURE_VIEWS["rkl_seq"]
  rows = _rows(
    **{
      GOLDEN: U_SHAPE,
      PROXY: falling,
      TRAIN_PROXY: falling / 2,
      rkl[0]: U_SHAPE,
      rkl[1]: rising,
      rkl_seq[0]: flat,
      rkl_seq[1]: falling,
    }
  )
  s = summaries.summarize_run(rows, 5.0, detection.DetectorSettings(), PROXY)
  assert s["outcome"] == "teacher_hacking" and s["hacking"]
  assert (s["golden_min_step"], s["golden_final"], s["proxy_final"]) == (200, 1.7, 0.6)
  assert s["train_proxy_at_golden_min"] == 0.35 and s["train_proxy_final"] == 0.3
  assert {view: v["outcome"] for view, v in s["views"].items()} == {
    "fkl": "teacher_hacking",
    "rkl": "overfitting",
    "rkl_seq": "none",
  }  # no jsd curves logged
  assert s["views"]["rkl"]["golden_metric"] == "eval_student/golden/rkl"
  assert s["golden_vs_proxy_after_min"]["alpha"] < 0 < s["golden_vs_proxy_before_min"]["alpha"]
  over = summaries.summarize_run(
    _rows(**{GOLDEN: U_SHAPE, PROXY: rising, TRAIN_PROXY: falling}),
    5.0,
    detection.DetectorSettings(),
    PROXY,
  )
  assert over["outcome"] == "overfitting" and not over["hacking"]


def _summary(outcome, detected, lag=None):
  return {
    "outcome": outcome,
    "hacking": outcome == "teacher_hacking",
    "detected": detected,
    "detected_lag_steps": lag,
    "detected_lag_evals": lag and lag // 100,
    "golden_min": None if outcome == "diverged" else 1.0,
  }


RUNS = [
  _summary("teacher_hacking", True, 300),
  _summary("overfitting", True, 500),
  _summary("overfitting", False),
  _summary("none", True),
  _summary("none", False),
  _summary("diverged", False),
]


def test_the_detector_is_right_on_any_golden_rise_in_reports_and_in_its_evaluation():
  from th_distill.results import detector_scores

  quality = summaries.detector_quality(RUNS)
  assert {
    k: quality[k]
    for k in ("runs", "true_positives", "false_positives", "false_negatives", "true_negatives")
  } == {
    "runs": 6,
    "true_positives": 2,
    "false_positives": 1,
    "false_negatives": 1,
    "true_negatives": 2,
  }
  assert quality["lag_steps"] == [300, 500] and quality["lag_evals"] == [3, 5]
  entries = [
    {**s, "proxy_never_rises": False, "lag_evals": 0, "golden_cost_pct": 0.0, "kept_cost_pct": 0.0}
    for s in RUNS
  ]
  scored = detector_scores.quality(entries)  # the calibration protocol counts the same way
  assert [
    scored[k] for k in ("true_positives", "false_positives", "false_negatives", "true_negatives")
  ] == [2, 1, 1, 2]


def test_an_arm_counts_outcomes_and_averages_the_defined_numbers():
  seeds = {
    str(i): {
      **s,
      **{k: (None if s["golden_min"] is None else float(i)) for k in summaries.ARM_MEANS},
    }
    for i, s in enumerate(RUNS)
  }
  arm = summaries.summarize_arm(seeds)
  assert arm["outcomes"] == {
    "teacher_hacking": 1,
    "overfitting": 2,
    "regression": 0,
    "none": 2,
    "diverged": 1,
  }
  assert arm["hacking_runs"] == 1 and arm["detected_runs"] == 3
  assert arm["mean"]["golden_min"] == 2.0  # mean of seeds 0-4; the diverged seed 5 has none
  assert arm["seeds"] == seeds


def test_curve_names_are_the_logged_divergences_and_the_loss():
  for golden, proxy, _ in metric_names.SIGNATURE_VIEWS.values():
    assert metric_names.is_curve_name(golden) and metric_names.is_curve_name(proxy)
  assert all(map(metric_names.is_curve_name, metric_names.TRAIN_CURVES))
  for name in (
    "train/grad_norm",
    "train/proxy/fkl_seq",
    "eval_teacher/proxy/kl",
    "eval_oracle/entropy/student",
    "detector/score",
  ):
    assert not metric_names.is_curve_name(name)
