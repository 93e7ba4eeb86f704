"""The gap map's report section: its tables in markdown, its json and its figure
(`results.gap_map` computes them)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import detection
from th_distill.observing.metrics_io import read_metrics
from th_distill.results import gap_map, plots
from th_distill.rundir import checkpoints

FIGURE = "rise_vs_gap.png"


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
    "| regime, length | runs | rise % = a + b gap: b [95% CI] | b [seed bootstrap 95%] | "
    "a [95% CI] | r² | b on the runs that passed (runs) | trend = a + b gap: b [95% CI] | "
    "rise without pass (of never passed) | pass without rise (of passed) | "
    "rising trend without pass | pass without rising trend | "
    "diversity residual at equal gap: mean [95% CI] (runs) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, g in analysis["groups"].items():
    rise, trend, c, t = g["rise_vs_gap"], g["trend_vs_gap"], g["counts"], g["counts_rising_trend"]
    d = g["diversity_at_equal_gap"]
    residual = "–" if d["mean"] is None else f"{d['mean']:+.1f}"
    if d["mean_ci95"] is not None:
      residual += f" [{d['mean_ci95'][0]:+.1f}, {d['mean_ci95'][1]:+.1f}]"
    fitted, boot = "r2" in rise, g["rise_vs_gap_seed_bootstrap_ci95"]
    lines.append(
      f"| {name} | {rise['n']} | {_interval(rise, 'slope')} | "
      f"{'–' if boot is None else f'[{boot[0]:+.1f}, {boot[1]:+.1f}]'} | "
      f"{_interval(rise, 'intercept')} | "
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


def predictor_lines(analysis: Mapping[str, Any]) -> list[str]:
  """The rise fitted against each predictor (`gap_map.predictors`), in markdown: r² and slope."""
  names = gap_map.PREDICTORS
  lines = [
    "| regime, length | " + " | ".join(f"{n}: r², slope [95% CI]" for n in names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for group, g in analysis["groups"].items():
    cells = [
      "–" if "r2" not in fit else f"{fit['r2']:.2f}, {_interval(fit, 'slope')}"
      for fit in (g["predictors"][n] for n in names)
    ]
    lines.append(f"| {group} | " + " | ".join(cells) + " |")
  return lines


def onset_lines(onsets: Mapping[str, Any]) -> list[str]:
  """Per setting, the steps from which each regime's golden trend stays rising (by seed; –
  never within the run) and the counts of `gap_map.onsets`, in markdown."""
  lines = [
    "| setting | offline onset steps | online teacher onset steps | offline turned | "
    "online turned | online later or never (of offline turned) |",
    "|---|---|---|---|---|---|",
  ]
  for setting, o in onsets.items():
    steps = {
      regime: ", ".join("–" if step is None else str(step) for step in seeds.values())
      for regime, seeds in o["onset_steps"].items()
    }
    lines.append(
      f"| {setting} | {steps.get('offline', '')} | {steps.get('online_teacher', '')} | "
      f"{_share(o['offline_turned'])} | {_share(o['online_turned'])} | "
      f"{_share(o['online_later_or_never'])} |"
    )
  return lines


def write_gap_map(
  directory: str,
  runs: Sequence[Mapping[str, Any]],
  teacher_golden: Mapping[str, float | None],
  threshold_pct: float,
  settings: detection.DetectorSettings,
  metric: str,
  diversity: Sequence[str] = (),
  unit: int = gap_map.DEFAULT_STEPS,
) -> dict[str, Any]:
  """The map of a study's runs (`runs`: each with `setting`, `regime`, `seed`, `path` to its
  metrics.jsonl and its configured `steps`; `teacher_golden` by path; each read at multiples of
  `unit` steps, `gap_map.run_points`): appends its section to
  `directory`/report.md, writes `gap_map.json` (the points and `analyse`) and FIGURE; returns
  the json's content."""
  points = []
  for run in runs:
    rows = read_metrics(run["path"])
    if not rows:
      continue
    found = gap_map.run_points(
      rows, run["steps"], teacher_golden.get(run["path"]), threshold_pct, settings, metric, unit
    )
    points += [
      {"setting": run["setting"], "regime": run["regime"], "seed": run["seed"], **p} for p in found
    ]
  analysis = gap_map.analyse(points, diversity)
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
    "The rise against each candidate predictor (gap: at the student's golden minimum; "
    "start_gap: teacher golden − the student's first golden value; the teacher's level; the "
    "student's start and minimum; doublings: log2 of the read's last step over the minimum's "
    "step):",
    "",
    *predictor_lines(analysis),
    "",
    "Online: delayed or prevented? The step from which a run's golden trend stays rising "
    "(its 95% interval above zero on the evaluations up to that step and every later one):",
    "",
    *onset_lines(analysis["onsets"]),
    "",
    f"![rise against gap]({FIGURE})",
    "",
  ]
  with open(os.path.join(directory, "report.md"), "a", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return result
