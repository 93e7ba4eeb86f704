"""The golden rise against the teacher-student gap (`configs/studies/gap_map.py`, docs/studies.md).

The claim tested (docs/signature_search.md section 5): golden rises after its minimum only where
the student passes its teacher (gap = teacher golden − the student's golden minimum > 0), by an
amount that grows with the gap, and faster offline than online. Every run gives one point per
length it reached: `LENGTHS` reads a run's rows up to 1, 2 and 4 times the default run's length
(`DEFAULT_STEPS`; the map's 4,000-step runs give 1x and 2x). A point *rose* when the oracle's verdict says
golden rose (`summaries.POSITIVE`: a rise of the threshold with a rising trend after the
minimum, or a regression from the start) and *passed* when the gap is positive.

Per regime and length (`analyse`):
- `fit_line` of the rise (%) and of the trend (% per doubling) against the gap (and of the rise
  on the runs that passed alone: does it grow with the gap beyond zero?), OLS with a 95%
  Student-t interval on the slope (the runs are taken as independent; runs of one seed share its
  oracle, so the interval is optimistic where one seed dominates);
- the counts of rise without a pass (of the runs that never passed) and of a pass without a rise
  (of the runs that passed), with Clopper-Pearson 95% intervals, a rise read both as the
  oracle's verdict and as a rising trend of any size (`rising`: its 95% interval above zero);
- where the diversity settings sit at equal gap (`at_equal_gap`): their residuals from the rise
  line fitted on the other settings, with a t interval on the mean residual;
- the rise-on-gap slope's interval again with whole seeds resampled (`seed_bootstrap_slope`),
  and the rise fitted against what else might predict it (`predictors`: the gap at the start,
  the teacher's and the student's levels, the doublings of the steps left after the minimum).
Per setting (`onsets`): when each regime's golden trend turned rising for good, offline against
online (online: delayed or prevented?). The markdown is `results.gap_map_report`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from th_distill import detection
from th_distill.detection.baselines import clopper_pearson
from th_distill.observing.metric_names import GOLDEN
from th_distill.observing.metrics_io import column
from th_distill.results import trend
from th_distill.results.summaries import POSITIVE, summarize_run

# The default run's length (configs/tiny.py: 2,000 steps), and (name, multiple of it) each run is
# read at where it reached it.
DEFAULT_STEPS = 2000
LENGTHS = (("1x", 1), ("2x", 2), ("4x", 4))
LEVEL = 0.95
# What each run's rise is fitted against: the gap, and what else might predict the rise.
PREDICTORS = ("gap", "start_gap", "teacher_golden", "student_start", "golden_min", "doublings")
BOOTSTRAP_REPS = 2000


def run_points(
  rows: Sequence[Mapping[str, Any]],
  steps: int,
  teacher_golden: float | None,
  threshold_pct: float,
  settings: detection.DetectorSettings,
  metric: str,
  unit: int = DEFAULT_STEPS,
) -> list[dict[str, Any]]:
  """One point per `LENGTHS` entry within the run's configured `steps` that its metrics `rows`
  reached: the run summary (`summarize_run`) of its rows up to that multiple of `unit` steps,
  reduced to the numbers of the map."""
  points = []
  for length, multiple in LENGTHS:
    cut = [r for r in rows if r["step"] <= multiple * unit]
    if multiple * unit > steps or not cut or cut[-1]["step"] < multiple * unit:
      continue
    s = summarize_run(cut, threshold_pct, settings, metric, teacher_golden)
    gap = s["teacher_gap_at_golden_min"]
    points.append(
      {
        "length": length,
        "steps": int(cut[-1]["step"]),
        "teacher_golden": teacher_golden,
        "student_start": s["student_init_golden"],
        "golden_min": s["golden_min"],
        "golden_min_step": s["golden_min_step"],
        "gap": gap,
        "rise_pct": s["golden_rise_pct"],
        "trend": s["golden_trend_pct_per_doubling"],
        "trend_ci95": s["golden_trend_ci95"],
        "rose": s["outcome"] in POSITIVE,
        "rising": s["golden_trend_rising"],
        "passed": None if gap is None else gap > 0,
        "pass_step": s["teacher_pass_step"],
        "proxy_change_pct": s["proxy_change_after_min_pct"],
        "outcome": s["outcome"],
        "start_gap": None if teacher_golden is None else teacher_golden - s["student_init_golden"],
        "doublings": _doublings(s["golden_min_step"], int(cut[-1]["step"])),
        "onset_step": trend_onset_step([r["step"] for r in cut], column(cut, GOLDEN)),
      }
    )
  return points


def _doublings(min_step: int | None, last_step: int) -> float | None:
  """How many doublings of the steps the read leaves after golden's minimum (None: no minimum
  after step 0)."""
  return None if not min_step else float(np.log2(last_step / min_step))


def trend_onset_step(
  steps: Sequence[float], golden: Sequence[float], level: float = LEVEL
) -> int | None:
  """The step from which golden's trend after its minimum stays rising: the first evaluation s
  such that the trend (`trend.trend_after_minimum`) read on the evaluations up to s, and up to
  every later one, is rising; None if it is not rising at the last. `steps`, `golden`: [T], in
  step order."""
  steps, golden = np.asarray(steps, float), np.asarray(golden, float)
  onset = None
  for end in range(trend.MIN_POINTS + 2, len(steps) + 1):
    if not trend.trend_after_minimum(steps[:end], golden[:end], level).rising:
      onset = None
    elif onset is None:
      onset = int(steps[end - 1])
  return onset


def fit_line(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
  """OLS line y = intercept + slope x over the finite pairs of `x`, `y` [n], with the slope's
  and the intercept's Student-t `level` intervals (n - 2 degrees of freedom); only `n` where
  fewer than 3 pairs or no spread in x."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  if len(x) < 3 or np.ptp(x) == 0:
    return {"n": int(len(x))}
  fit = stats.linregress(x, y)
  half = float(stats.t.ppf(0.5 + level / 2, len(x) - 2))
  return {
    "n": int(len(x)),
    "slope": float(fit.slope),
    "slope_ci95": [float(fit.slope - half * fit.stderr), float(fit.slope + half * fit.stderr)],
    "intercept": float(fit.intercept),
    "intercept_ci95": [
      float(fit.intercept - half * fit.intercept_stderr),
      float(fit.intercept + half * fit.intercept_stderr),
    ],
    "r2": float(fit.rvalue**2),
  }


def seed_bootstrap_slope(
  points: Sequence[Mapping[str, Any]],
  x_key: str,
  y_key: str,
  level: float = LEVEL,
  reps: int = BOOTSTRAP_REPS,
) -> list[float] | None:
  """The percentile `level` interval of the OLS slope of `y_key` on `x_key` over `points`,
  resampling whole seeds with replacement (`reps` times, a fixed generator): the runs of one
  seed share its oracle, so they are not independent, and the t interval of `fit_line` is
  optimistic where they agree. None with fewer than 3 seeds."""
  by_seed: dict[Any, list[tuple[float, float]]] = defaultdict(list)
  for p in points:
    x, y = _none_nan(p[x_key]), _none_nan(p[y_key])
    if np.isfinite(x) and np.isfinite(y):
      by_seed[p["seed"]].append((x, y))
  groups = [np.array(pairs) for _, pairs in sorted(by_seed.items())]
  if len(groups) < 3:
    return None
  rng = np.random.default_rng(0)
  slopes = []
  for _ in range(reps):
    x, y = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))]).T
    if np.ptp(x) > 0:
      slopes.append(np.cov(x, y)[0, 1] / np.var(x, ddof=1))
  low, high = np.quantile(slopes, [(1 - level) / 2, (1 + level) / 2])
  return [float(low), float(high)]


def predictors(points: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """The rise (%) of `points` fitted against each of `PREDICTORS` (`fit_line`): which reading
  of the teacher and the student explains it best (r²), and with which slope."""
  rises = [p["rise_pct"] for p in points]
  return {name: fit_line([_none_nan(p[name]) for p in points], rises) for name in PREDICTORS}


def onsets(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Online: delayed or prevented? Per setting, from each run read at its full length: each
  regime's trend onset steps by seed (None: never rising within the run), and over the seeds
  that ran both regimes, how often offline turned rising, how often online did, and how often
  online turned later than offline or never (of the seeds where offline turned)."""
  longest: dict[tuple[str, str, int], Mapping[str, Any]] = {}
  for p in points:
    key = (p["setting"], p["regime"], p["seed"])
    if key not in longest or p["steps"] > longest[key]["steps"]:
      longest[key] = p
  by_setting: dict[str, dict[str, dict[int, int | None]]] = defaultdict(lambda: defaultdict(dict))
  for (setting, regime, seed), p in longest.items():
    by_setting[setting][regime][seed] = p["onset_step"]
  result = {}
  for setting, regimes in by_setting.items():
    offline, online = regimes.get("offline", {}), regimes.get("online_teacher", {})
    both = sorted(set(offline) & set(online))
    turned = [s for s in both if offline[s] is not None]
    later = [s for s in turned if online[s] is None or online[s] > offline[s]]
    result[setting] = {
      "onset_steps": {regime: dict(sorted(seeds.items())) for regime, seeds in regimes.items()},
      "offline_turned": proportion(len(turned), len(both)),
      "online_turned": proportion(sum(online[s] is not None for s in both), len(both)),
      "online_later_or_never": proportion(len(later), len(turned)),
    }
  return result


def proportion(successes: int, trials: int) -> dict[str, Any]:
  """`successes` of `trials` with the Clopper-Pearson 95% interval (None without trials)."""
  low, high = clopper_pearson(successes, trials)
  return {"k": successes, "n": trials, "ci95": None if trials == 0 else [low, high]}


def counts(points: Sequence[Mapping[str, Any]], rise: str = "rose") -> dict[str, Any]:
  """Rises without a pass (of the points that never passed) and passes without a rise (of the
  points that passed), a rise being the points' `rise` flag ('rose': the oracle's verdict;
  'rising': the trend's interval above zero, whatever the size); points whose teacher level is
  unknown are left out."""
  known = [p for p in points if p["passed"] is not None]
  passed = [p for p in known if p["passed"]]
  never = [p for p in known if not p["passed"]]
  return {
    "rise_without_pass": proportion(sum(p[rise] for p in never), len(never)),
    "pass_without_rise": proportion(sum(not p[rise] for p in passed), len(passed)),
    "rises": proportion(sum(p[rise] for p in known), len(known)),
  }


def at_equal_gap(
  points: Sequence[Mapping[str, Any]], diversity: Sequence[str], level: float = LEVEL
) -> dict[str, Any]:
  """The diversity settings' rises against the rise line of the other settings at the same gap:
  each diversity point's residual (rise − line at its gap), and their mean with a Student-t
  `level` interval (None with fewer than 2); None where the line cannot be fitted."""
  others = [p for p in points if p["setting"] not in diversity]
  line = fit_line([p["gap"] for p in others], [p["rise_pct"] for p in others])
  chosen = [p for p in points if p["setting"] in diversity and p["gap"] is not None]
  if "slope" not in line or not chosen:
    return {"line_n": line["n"], "residuals": [], "mean": None, "mean_ci95": None}
  residuals = [
    {
      "setting": p["setting"],
      "seed": p["seed"],
      "gap": p["gap"],
      "rise_pct": p["rise_pct"],
      "residual": p["rise_pct"] - (line["intercept"] + line["slope"] * p["gap"]),
    }
    for p in chosen
  ]
  values = np.array([r["residual"] for r in residuals])
  interval = None
  if len(values) >= 2:
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    interval = [float(values.mean() - half), float(values.mean() + half)]
  return {
    "line_n": line["n"],
    "residuals": residuals,
    "mean": float(values.mean()),
    "mean_ci95": interval,
  }


def analyse(points: Sequence[Mapping[str, Any]], diversity: Sequence[str]) -> dict[str, Any]:
  """Per 'regime length' group of `points`: the rise and trend lines against the gap, the
  counts and the diversity settings at equal gap (module docstring); `all`: the counts over
  every point."""
  groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
  for p in points:
    groups[f"{p['regime']} {p['length']}"].append(p)
  result: dict[str, Any] = {}
  for name, group in sorted(groups.items()):
    gaps = [p["gap"] for p in group]
    result[name] = {
      "rise_vs_gap": fit_line(gaps, [p["rise_pct"] for p in group]),
      "rise_vs_gap_passed": fit_line(
        [p["gap"] for p in group if p["passed"]], [p["rise_pct"] for p in group if p["passed"]]
      ),
      "trend_vs_gap": fit_line(gaps, [_none_nan(p["trend"]) for p in group]),
      "rise_vs_gap_seed_bootstrap_ci95": seed_bootstrap_slope(group, "gap", "rise_pct"),
      "predictors": predictors(group),
      "counts": counts(group),
      "counts_rising_trend": counts(group, "rising"),
      "diversity_at_equal_gap": at_equal_gap(group, diversity),
    }
  return {
    "groups": result,
    "onsets": onsets(points),
    "all": counts(points),
    "all_rising_trend": counts(points, "rising"),
  }


def _none_nan(value: float | None) -> float:
  return np.nan if value is None else value
