"""The golden rise against the teacher-student gap (`configs/studies/gap_map.py`, docs/studies.md).

The claim tested (docs/signature_search.md section 5): golden rises after its minimum only where
the student passes its teacher (gap = teacher golden − the student's golden minimum > 0), by an
amount that grows with the gap, and faster offline than online. Every run gives one point per
length: `LENGTHS` reads a run at its full length (2x the default's 2,000 steps in the study) and
at half of it (its rows up to that step: 1x). A point *rose* when the oracle's verdict says
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
  line fitted on the other settings, with a t interval on the mean residual.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from th_distill import detection
from th_distill.detection.baselines import clopper_pearson
from th_distill.observing.metrics_io import read_metrics
from th_distill.results import plots
from th_distill.results.summaries import POSITIVE, summarize_run
from th_distill.rundir import checkpoints

# (name, fraction of the run's steps) each run is read at.
LENGTHS = (("1x", 0.5), ("2x", 1.0))
FIGURE = "rise_vs_gap.png"
LEVEL = 0.95


def run_points(
  rows: Sequence[Mapping[str, Any]],
  steps: int,
  teacher_golden: float | None,
  threshold_pct: float,
  settings: detection.DetectorSettings,
  metric: str,
) -> list[dict[str, Any]]:
  """One point per `LENGTHS` entry the run reached, from its metrics `rows` and its configured
  `steps`: the run summary (`summarize_run`) of its rows up to that fraction of `steps`,
  reduced to the numbers of the map."""
  points = []
  for length, fraction in LENGTHS:
    cut = [r for r in rows if r["step"] <= fraction * steps]
    if not cut or cut[-1]["step"] < fraction * steps:
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
      }
    )
  return points


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
      "counts": counts(group),
      "counts_rising_trend": counts(group, "rising"),
      "diversity_at_equal_gap": at_equal_gap(group, diversity),
    }
  return {
    "groups": result,
    "all": counts(points),
    "all_rising_trend": counts(points, "rising"),
  }


def _none_nan(value: float | None) -> float:
  return np.nan if value is None else value


def _cell(values: Sequence[float | None], spec: str) -> str:
  """One value, or mean ± sd of the defined values; '–' if none."""
  defined = [v for v in values if v is not None]
  if not defined:
    return "–"
  if len(defined) == 1:
    return format(defined[0], spec)
  return f"{np.mean(defined):{spec}} ± {np.std(defined, ddof=1):{spec.lstrip('+')}}"


def _trend_cell(group: Sequence[Mapping[str, Any]]) -> str:
  """One run's trend with its interval, or the mean ± sd with the count rising."""
  if len(group) == 1:
    p = group[0]
    if p["trend_ci95"] is None:
      return "–"
    return f"{p['trend']:+.2f} [{p['trend_ci95'][0]:+.2f}, {p['trend_ci95'][1]:+.2f}]"
  rising = sum(p["trend_ci95"] is not None and p["trend_ci95"][0] > 0 for p in group)
  return f"{_cell([p['trend'] for p in group], '+.2f')} (rising {rising}/{len(group)})"


def table(points: Sequence[Mapping[str, Any]]) -> list[str]:
  """The map's table in markdown: one row per setting, regime and length (over its seeds)."""
  rows: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
  for p in points:
    rows[p["setting"], p["regime"], p["length"]].append(p)
  lines = [
    "| setting | regime | length | seeds | teacher golden | student start | golden min @ step | "
    "gap | rise % | trend %/doubling [95% CI] | pass step | outcome |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (setting, regime, length), group in rows.items():
    outcomes = ", ".join(p["outcome"] for p in group)
    lines.append(
      f"| {setting} | {regime} | {length} | {', '.join(str(p['seed']) for p in group)} | "
      f"{_cell([p['teacher_golden'] for p in group], '.3f')} | "
      f"{_cell([p['student_start'] for p in group], '.3f')} | "
      f"{_cell([p['golden_min'] for p in group], '.3f')} @ "
      f"{', '.join(str(p['golden_min_step']) for p in group)} | "
      f"{_cell([p['gap'] for p in group], '+.3f')} | "
      f"{_cell([p['rise_pct'] for p in group], '+.1f')} | {_trend_cell(group)} | "
      f"{', '.join('–' if p['pass_step'] is None else str(p['pass_step']) for p in group)} | "
      f"{outcomes} |"
    )
  return lines


def _interval(fit: Mapping[str, Any], key: str, spec: str = "+.1f") -> str:
  """'value [low, high]' of a fitted `key` ('–' where the line could not be fitted)."""
  if key not in fit:
    return "–"
  low, high = fit[f"{key}_ci95"]
  return f"{fit[key]:{spec}} [{low:{spec}}, {high:{spec}}]"


def _share(count: Mapping[str, Any]) -> str:
  """'k/n [low, high]' of a proportion."""
  if count["ci95"] is None:
    return f"{count['k']}/{count['n']}"
  low, high = count["ci95"]
  return f"{count['k']}/{count['n']} [{low:.2f}, {high:.2f}]"


def analysis_lines(analysis: Mapping[str, Any], diversity: Sequence[str]) -> list[str]:
  """The fits, the counts and the diversity settings at equal gap, in markdown."""
  lines = [
    "| regime, length | runs | rise % = a + b gap: b [95% CI] | a [95% CI] | r² | "
    "b on the runs that passed (runs) | trend = a + b gap: b [95% CI] | "
    "rise without pass (of never passed) | pass without rise (of passed) | "
    "rising trend without pass | pass without rising trend | "
    "diversity residual at equal gap: mean [95% CI] (runs) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, g in analysis["groups"].items():
    rise, trend, c, t = g["rise_vs_gap"], g["trend_vs_gap"], g["counts"], g["counts_rising_trend"]
    d = g["diversity_at_equal_gap"]
    residual = "–" if d["mean"] is None else f"{d['mean']:+.1f}"
    if d["mean_ci95"] is not None:
      residual += f" [{d['mean_ci95'][0]:+.1f}, {d['mean_ci95'][1]:+.1f}]"
    fitted = "r2" in rise
    lines.append(
      f"| {name} | {rise['n']} | {_interval(rise, 'slope')} | {_interval(rise, 'intercept')} | "
      f"{format(rise['r2'], '.2f') if fitted else '–'} | "
      f"{_interval(g['rise_vs_gap_passed'], 'slope')} ({g['rise_vs_gap_passed']['n']}) | "
      f"{_interval(trend, 'slope', '+.2f')} | "
      f"{_share(c['rise_without_pass'])} | {_share(c['pass_without_rise'])} | "
      f"{_share(t['rise_without_pass'])} | {_share(t['pass_without_rise'])} | "
      f"{residual} ({len(d['residuals'])}) |"
    )
  total, trending = analysis["all"], analysis["all_rising_trend"]
  lines += [
    "",
    f"All points: rise without a pass {_share(total['rise_without_pass'])}, a pass without a "
    f"rise {_share(total['pass_without_rise'])}, rises {_share(total['rises'])}; with a "
    "rise read as a rising trend of any size: "
    f"{_share(trending['rise_without_pass'])}, {_share(trending['pass_without_rise'])}, "
    f"{_share(trending['rises'])} (k/n [Clopper-Pearson 95%]). Diversity settings "
    f"(residuals from the other settings' rise line): {', '.join(diversity) or 'none'}.",
  ]
  return lines


def write_gap_map(
  directory: str,
  runs: Sequence[Mapping[str, Any]],
  teacher_golden: Mapping[str, float | None],
  threshold_pct: float,
  settings: detection.DetectorSettings,
  metric: str,
  diversity: Sequence[str] = (),
) -> dict[str, Any]:
  """The map of a study's runs (`runs`: each with `setting`, `regime`, `seed`, `path` to its
  metrics.jsonl and its configured `steps`; `teacher_golden` by path): appends its section to
  `directory`/report.md, writes `gap_map.json` (the points and `analyse`) and FIGURE; returns
  the json's content."""
  points = []
  for run in runs:
    rows = read_metrics(run["path"])
    if not rows:
      continue
    found = run_points(
      rows, run["steps"], teacher_golden.get(run["path"]), threshold_pct, settings, metric
    )
    points += [
      {"setting": run["setting"], "regime": run["regime"], "seed": run["seed"], **p} for p in found
    ]
  analysis = analyse(points, diversity)
  result = {"points": points, "analysis": analysis, "diversity": list(diversity)}
  checkpoints.write_json(os.path.join(directory, "gap_map.json"), result)
  plots.plot_rise_vs_gap(points, os.path.join(directory, FIGURE))
  lines = [
    "",
    "## The golden rise against the teacher-student gap",
    "",
    "gap = teacher golden − the student's golden minimum (positive: the student passed its "
    "teacher); pass step = the first evaluation below the teacher (– never); 1x = a run's rows "
    "up to half its steps, 2x = all of them; rose = the oracle's verdict is a golden rise "
    "(teacher hacking, over-fitting or regression). Lines: OLS over the runs of each regime "
    "and length; counts with Clopper-Pearson 95% intervals.",
    "",
    *table(points),
    "",
    *analysis_lines(analysis, diversity),
    "",
    f"![rise against gap]({FIGURE})",
    "",
  ]
  with open(os.path.join(directory, "report.md"), "a", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return result
