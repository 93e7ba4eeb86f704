"""The reports: `summary.json`, figures and `report.md` of one experiment (`write_report`) or
of a study (`write_study_report`). The numbers come from `th_distill.results.summaries` (the oracle's
verdicts and their definitions), the figures from `th_distill.results.plots`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import detection
from th_distill.config.run_config import RunConfig
from th_distill.observing.metric_names import GOLDEN, PROXY, TRAIN_PROXY
from th_distill.observing.metrics_io import column, read_metrics
from th_distill.results import paired, plots
from th_distill.results.summaries import detector_quality, summarize_arm, summarize_run
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RunDirectory


def _curves(
  rows_by_label: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], metric: str
) -> dict[str, plots.Curve]:
  """{label: Curve of `metric` over the label's seeds}, cut to the seeds' common length."""
  curves = {}
  for label, runs in rows_by_label.items():
    length = min(len(rows) for rows in runs)
    curves[label] = plots.Curve(
      np.array([r["step"] for r in runs[0][:length]]),
      np.stack([column(rows[:length], metric) for rows in runs]),
    )
  return curves


def write_figures(
  directory: str,
  rows_by_label: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
  settings: detection.DetectorSettings,
  metric: str,
  teacher_golden: float | None = None,
) -> None:
  """curves.png, proxy_golden.png and detector.png (seed 0 of every label) in `directory`;
  `teacher_golden` (the teacher's own golden distance, a seed mean for a study) is drawn as a
  horizontal line on the golden panel."""
  golden, proxy = _curves(rows_by_label, GOLDEN), _curves(rows_by_label, PROXY)
  train_proxy = _curves(rows_by_label, TRAIN_PROXY)
  teacher_line = {} if teacher_golden is None else {"teacher": teacher_golden}
  plots.plot_metric_panels(
    [
      ("golden: KL(oracle || student), held-out", golden),
      ("proxy: KL(teacher || student), held-out", proxy),
      ("proxy on training prompts", train_proxy),
    ],
    os.path.join(directory, "curves.png"),
    levels=[teacher_line],
  )
  plots.plot_proxy_golden(
    [
      ("golden vs proxy (held-out prompts)", proxy, golden),
      ("golden vs proxy (training prompts)", train_proxy, golden),
    ],
    os.path.join(directory, "proxy_golden.png"),
  )
  watched = _curves(rows_by_label, metric)
  runs = {}
  for label, curve in watched.items():
    first = plots.Curve(curve.steps, curve.values[:1])
    runs[label] = (
      first,
      plots.Curve(golden[label].steps, golden[label].values[:1]),
      detection.detect(first.steps, first.values[0], settings),
    )
  plots.plot_detections(runs, metric, os.path.join(directory, "detector.png"))


def _settings_text(settings: detection.DetectorSettings, metric: str) -> str:
  if settings.rule == "slowdown":
    rule = (
      f"fires after {settings.patience} consecutive evaluations at which the log-log slope "
      f"over the last x{settings.window:g} of steps is below {settings.slope_ratio:g} times "
      "the slope over the span before"
    )
  elif settings.rule == "early_stopping":
    rule = (
      f"fires after {settings.patience} consecutive evaluations more than "
      f"{100 * settings.noise_floor:g}% above the running minimum"
    )
  else:
    rule = (
      f"{settings.law} law fitted over the {settings.window:g}x window of steps before "
      f"each evaluation, fires after {settings.patience} consecutive evaluations more than "
      f"{settings.threshold:g} noise std {settings.direction} it (noise floor "
      f"{settings.noise_floor:g} in log space)"
    )
  return f"Detector ('{settings.rule}' rule, docs/detection.md): `{metric}`, {rule}."


def write_report(workdir: str, config: RunConfig, teacher: Mapping[str, float]) -> dict[str, Any]:
  """Reads every regime's metrics.jsonl in `workdir`; writes summary.json, the figures and
  report.md; returns the summary. `teacher`: the teacher-vs-oracle numbers of stage 1."""
  settings, metric = config.detection.detector, config.detection.metric
  run_dir = RunDirectory(workdir)
  rows = {r: read_metrics(run_dir.regime(r).metrics) for r in config.regimes}
  rows = {r: v for r, v in rows.items() if v}
  teacher_golden = teacher["teacher/golden/fkl@oracle_samples"]
  regimes = {
    r: summarize_run(v, config.hacking_threshold_pct, settings, metric, teacher_golden)
    for r, v in rows.items()
  }
  starts = [s["student_init_golden"] for s in regimes.values()]
  summary = {
    "teacher_golden": teacher_golden,
    "student_init_golden": starts[0] if starts else None,
    "teacher": {
      "golden_fkl": teacher_golden,
      **{k: v for k, v in teacher.items() if k.startswith("teacher/")},
    },
    "regimes": regimes,
  }
  checkpoints.write_json(run_dir.summary, summary)
  write_figures(workdir, {r: [v] for r, v in rows.items()}, settings, metric, teacher_golden)
  lines = [
    "# th_distill run report",
    "",
    *(f"- {sentence(regime, s)}" for regime, s in summary["regimes"].items()),
    "",
    f"Seed {config.seed}; offline data N = {config.offline.num_prompts} prompts x k = "
    f"{config.offline.generations_per_prompt}; online prompts: {config.online.prompts}; "
    f"loss {config.loss.name}; student init {config.student.init}, "
    f"{config.student.steps} steps of batch {config.student.batch_size}. "
    f"{teacher_sentence(teacher_golden, summary['student_init_golden'])} "
    f"{run_time_sentence(workdir, teacher, rows)}",
    "",
    "| regime | outcome (oracle) | golden start | golden min @ step | golden final | "
    "rise % | trend %/doubling [95% CI] | proxy at golden min -> final (change %) | "
    "detector |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for regime, s in summary["regimes"].items():
    lines.append(
      f"| {regime} | {s['outcome']} | {_number(s['golden_start'])} | "
      f"{_number(s['golden_min'])} @ {s['golden_min_step']} | "
      f"{_number(s['golden_final'])} | {_number(s['golden_rise_pct'], '+.1f')} | "
      f"{trend_text(s)} | "
      f"{_number(s['proxy_at_golden_min'])} -> {_number(s['proxy_final'])} "
      f"({_number(s['proxy_change_after_min_pct'], '+.1f')}) | {_verdict(s)} |"
    )
  lines += [
    "",
    f"golden = `{GOLDEN}` (KL(oracle || student) per token on oracle samples of the "
    f"held-out prompts), proxy = `{PROXY}` (KL(teacher || student) per token on teacher "
    "samples of the same prompts); rise = 100 (final - min) / min of golden; change = "
    "100 (final - at golden min) / at golden min of the proxy; trend = the OLS slope of "
    "golden (percent of its minimum) against log2(step) after the minimum, with a 95% "
    "interval corrected for autocorrelated evaluations. Outcome: `regression` = "
    "golden never fell below its start and ended >= "
    f"{config.hacking_threshold_pct:g}% above it (the student moved toward a teacher "
    "worse than itself); otherwise golden *rose* when it ended >= the threshold above "
    "its minimum with a trend whose interval lies above zero, and the outcome is "
    "`teacher_hacking` if the proxy did not rise, `overfitting` if it rose too; "
    "`none` otherwise "
    "(docs/metrics.md).",
    "",
    "The same verdict read with every divergence, per token and per sequence (`_seq`):",
    "",
    "| regime | view | sampled by | golden rise % | proxy change % | outcome |",
    "|---|---|---|---|---|---|",
  ]
  for regime, s in summary["regimes"].items():
    for view, v in s["views"].items():
      lines.append(
        f"| {regime} | {view} | {v['sampled_by']} | "
        f"{_number(v['golden_rise_pct'], '+.1f')} | "
        f"{_number(v['proxy_change_after_min_pct'], '+.1f')} | {v['outcome']} |"
      )
  lines += [
    "",
    _settings_text(settings, metric),
    "",
    "![curves](curves.png)",
    "",
    "![proxy-golden](proxy_golden.png)",
    "",
    "![detector](detector.png)",
    "",
  ]
  with open(run_dir.report, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return summary


def teacher_sentence(teacher_golden: float, student_init_golden: float | None) -> str:
  """The teacher's golden distance beside the student's at its start, and which is better."""
  text = (
    f"Teacher golden fkl (KL(oracle || teacher) per token, oracle samples): {teacher_golden:.3f}"
  )
  if student_init_golden is None:
    return text + "."
  better = (
    "better than the student's start: worth distilling from"
    if teacher_golden < student_init_golden
    else "worse than the student's start: distillation pulls the student toward a worse model"
  )
  return f"{text}; the student starts at {student_init_golden:.3f} (the teacher is {better})."


def trend_text(s: Mapping[str, Any]) -> str:
  """'+1.23 [+0.45, +2.01]' (percent per doubling of the steps), or '–' without a trend."""
  if s.get("golden_trend_ci95") is None:
    return "–"
  low, high = s["golden_trend_ci95"]
  return f"{s['golden_trend_pct_per_doubling']:+.2f} [{low:+.2f}, {high:+.2f}]"


def run_time_sentence(workdir: str, stage1: Mapping[str, Any], regimes: Sequence[str]) -> str:
  """'Run time: ...' from the seconds recorded by stage 1 and by each finished regime."""
  parts = [("stage 1", stage1.get("seconds"))]
  for regime in regimes:
    directory = RunDirectory(workdir).regime(regime)
    parts.append((regime, directory.done_record().get("seconds") if directory.finished else None))
  known = [seconds for _, seconds in parts if seconds is not None]
  text = ", ".join(
    f"{name} {seconds / 60:.1f} min" for name, seconds in parts if seconds is not None
  )
  return f"Run time: {text} (total {sum(known) / 60:.1f} min)." if known else ""


def sentence(regime: str, s: Mapping[str, Any]) -> str:
  """One plain sentence on a regime's summary: the oracle's verdict, then the detector's."""
  detector = (
    f"the detector, reading the proxy alone, fired at step {s['detected_step']}"
    if s["detected"]
    else "the detector, reading the proxy alone, stayed silent"
  )
  if s["outcome"] == "teacher_hacking":
    what = (
      f"teacher hacking: the golden distance rose {s['golden_rise_pct']:.1f}% after step "
      f"{s['golden_min_step']} while the held-out proxy kept falling "
      f"({s['proxy_change_after_min_pct']:+.1f}%)"
    )
  elif s["outcome"] == "overfitting":
    what = (
      f"over-fitting: the golden distance rose {s['golden_rise_pct']:.1f}% after step "
      f"{s['golden_min_step']} and the held-out proxy rose with it "
      f"({s['proxy_change_after_min_pct']:+.1f}%)"
    )
  elif s["outcome"] == "regression":
    what = (
      f"regression: the golden distance never fell below its start "
      f"and ended {s['golden_rise_pct']:.1f}% above it"
    )
  elif s["outcome"] == "diverged":
    what = "diverged: its last golden or proxy value is not finite (no verdict)"
  else:
    what = (
      f"no hacking: the golden distance ended {s['golden_rise_pct']:.1f}% above its "
      f"minimum (step {s['golden_min_step']})"
    )
  if s.get("golden_trend_ci95") is not None:
    what += f", trend {trend_text(s)} % per doubling of the steps"
  return f"{regime}: {what}; {detector}."


def _number(value: float | None, spec: str = ".4f") -> str:
  return "–" if value is None else format(value, spec)


def _verdict(s: Mapping[str, Any]) -> str:
  return f"fires @ {s['detected_step']}" if s["detected"] else "silent"


def _mean_sd(values: Sequence[float | None], spec: str = ".3f") -> str:
  """'mean ± sd' of the defined values, '(n of N)' appended when some are undefined (a diverged
  run, or a trend with too few points), '–' when none is."""
  defined = np.asarray([v for v in values if v is not None], dtype=float)
  missing = f" ({len(defined)} of {len(values)})" if len(defined) < len(values) else ""
  if len(defined) == 0:
    return "–"
  if len(defined) == 1:
    return format(defined[0], spec) + missing
  return f"{np.mean(defined):{spec}} ± {np.std(defined, ddof=1):{spec.lstrip('+')}}{missing}"


def write_study_report(
  directory: str,
  title: str,
  runs: Mapping[str, Sequence[tuple[int, str]]],
  config: RunConfig,
  reference: str = "",
  teacher_golden: Mapping[str, float] | None = None,
) -> dict[str, Any]:
  """The report of a study: `runs` maps an arm's label to its (seed, metrics.jsonl path) pairs;
  `teacher_golden` maps a metrics.jsonl path to its run's teacher golden distance.

  Writes `summary.json` (per arm: every seed's run summary and the means; `paired`: every arm's
  paired differences over seeds from the `reference` arm, by default the first;
  `th_distill.results.paired`), `curves.png`, `proxy_golden.png`, `detector.png` and `report.md` into
  `directory`; `config` gives the detector settings and the hacking threshold. Arms without any
  finished seed are left out.
  """
  settings, metric = config.detection.detector, config.detection.metric
  rows = {
    label: [(seed, read_metrics(path)) for seed, path in pairs] for label, pairs in runs.items()
  }
  rows = {label: [(s, r) for s, r in pairs if r] for label, pairs in rows.items()}
  rows = {label: pairs for label, pairs in rows.items() if pairs}
  arms = {}
  for label, pairs in rows.items():
    paths = dict(runs[label])
    seeds = {
      str(seed): summarize_run(
        r, config.hacking_threshold_pct, settings, metric, (teacher_golden or {}).get(paths[seed])
      )
      for seed, r in pairs
    }
    arms[label] = {
      **summarize_arm(seeds),
      "metrics_files": {str(seed): path for seed, path in runs[label]},
    }
  quality = detector_quality([s for arm in arms.values() for s in arm["seeds"].values()])
  reference = reference or next(iter(arms))
  comparisons = paired.compare_arms(arms, reference) if reference in arms else {}
  summary = {
    "title": title,
    "arms": arms,
    "reference": reference,
    "paired": comparisons,
    "detector": {"metric": metric, "settings": dataclasses.asdict(settings), **quality},
  }
  os.makedirs(directory, exist_ok=True)
  checkpoints.write_json(os.path.join(directory, "summary.json"), summary)
  levels = [
    s["teacher_golden"]
    for arm in arms.values()
    for s in arm["seeds"].values()
    if s["teacher_golden"] is not None
  ]
  write_figures(
    directory,
    {label: [r for _, r in pairs] for label, pairs in rows.items()},
    settings,
    metric,
    float(np.mean(levels)) if levels else None,
  )
  lines = [
    f"# {title}",
    "",
    "Mean ± standard deviation over seeds, on held-out prompts; rise = 100 (final − "
    "min) / min of golden; proxy change = 100 (final − at golden min) / at golden min of "
    "the held-out proxy; outcome = the oracle's verdict per seed (teacher hacking: golden "
    f"fell, then rose ≥ {config.hacking_threshold_pct:g}% with a rising trend while the "
    "proxy did not rise; over-fitting: the same with the proxy rising; regression: golden "
    "never fell below its start and rose the threshold above it; see docs/metrics.md); "
    "detector = its verdict from the "
    "proxy curve alone, with the step it fired at per seed.",
    "",
    "Teacher golden = the teacher's own KL(oracle || teacher); golden start = the "
    "student's at step 0; trend = the slope of golden after its minimum in percent per "
    "doubling of the steps, with the seeds whose 95% interval lies above zero (rising).",
    "",
    "| arm | seeds | teacher golden | golden start | golden min | golden min step | "
    "golden final | rise % | trend %/doubling (rising) | proxy final | proxy change % | "
    "outcome (oracle) | detector |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for label, arm in arms.items():
    seeds = list(arm["seeds"].values())
    fired = ", ".join(str(s["detected_step"]) if s["detected"] else "–" for s in seeds)
    outcomes = ", ".join(f"{o.replace('_', ' ')} {n}" for o, n in arm["outcomes"].items() if n)
    rising = sum(s["golden_trend_rising"] for s in seeds)
    lines.append(
      f"| {label} | {len(seeds)} | {_mean_sd([s['teacher_golden'] for s in seeds])} | "
      f"{_mean_sd([s['student_init_golden'] for s in seeds])} | "
      f"{_mean_sd([s['golden_min'] for s in seeds])} | "
      f"{', '.join(str(s['golden_min_step']) for s in seeds)} | "
      f"{_mean_sd([s['golden_final'] for s in seeds])} | "
      f"{_mean_sd([s['golden_rise_pct'] for s in seeds], '+.1f')} | "
      f"{_mean_sd([s['golden_trend_pct_per_doubling'] for s in seeds], '+.2f')} "
      f"({rising}/{len(seeds)}) | "
      f"{_mean_sd([s['proxy_final'] for s in seeds])} | "
      f"{_mean_sd([s['proxy_change_after_min_pct'] for s in seeds], '+.1f')} | {outcomes} | "
      f"{arm['detected_runs']}/{len(seeds)} ({fired}) |"
    )
  if comparisons:
    lines += ["", "## Arms against each other", ""] + paired.table(comparisons, reference)
  lag = quality["lag_steps"]
  lines += [
    "",
    "## Detector against the oracle",
    "",
    f"{quality['runs']} runs (positive: golden rose by the threshold, teacher hacking "
    f"or over-fitting): {quality['true_positives']} true positives, "
    f"{quality['false_positives']} false positives, {quality['false_negatives']} false "
    f"negatives, {quality['true_negatives']} true negatives. Firing step minus golden "
    f"minimum step on true positives: {lag if lag else 'none'} "
    f"(in evaluations: {quality['lag_evals'] if lag else 'none'}).",
    _settings_text(settings, metric),
    "",
    "![curves](curves.png)",
    "",
    "![proxy-golden](proxy_golden.png)",
    "",
    "Detector on seed 0 of each arm (law fitted before the departure, firing step, "
    "golden minimum):",
    "",
    "![detector](detector.png)",
    "",
    "## Runs",
    "",
  ]
  for label, arm in arms.items():
    lines.append(
      f"- {label}: "
      + ", ".join(
        f"seed {seed} `{os.path.dirname(path)}`" for seed, path in arm["metrics_files"].items()
      )
    )
  lines.append("")
  with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return summary
