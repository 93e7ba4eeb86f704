"""The report of one experiment: `summary.json`, the figures and `report.md` (`write_report`),
and the sentences it is written in (a study's report, `results.study_report`, reuses them). The
numbers come from `th_distill.results.summaries` (the oracle's verdicts and their definitions),
the figures from `th_distill.results.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from th_distill import boundary, detection
from th_distill.config.run_config import RunConfig
from th_distill.data.vocabularies import task_vocabulary
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.observing.metrics_io import read_metrics
from th_distill.planning import workload
from th_distill.results import figures, samples
from th_distill.results.summaries import summarize_run
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RunDirectory


def settings_text(settings: detection.DetectorSettings, metric: str) -> str:
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
  report.md; returns the summary. `teacher`: the teacher-vs-oracle numbers of stage 1. Raises
  MetricsLost if a finished regime lacks an evaluation row (it is never reported on)."""
  settings, metric = config.detection.detector, config.detection.metric
  run_dir = RunDirectory(workdir)
  for regime in config.regimes:
    if run_dir.regime(regime).finished:
      run_dir.regime(regime).check_rows(config.eval_settings.steps)
  rows = {r: read_metrics(run_dir.regime(r).metrics) for r in config.regimes}
  rows = {r: v for r, v in rows.items() if v}
  summary = _summary(config, rows, teacher)
  checkpoints.write_json(run_dir.summary, summary)
  if config.write_figures:
    figures.write_figures(
      workdir, {r: [v] for r, v in rows.items()}, settings, metric, summary["teacher_golden"]
    )
  regimes = summary["regimes"]
  lines = [
    "# th_distill run report",
    "",
    *(f"- {sentence(regime, s)} {pass_sentence(s)}".rstrip() for regime, s in regimes.items()),
    "",
    f"Seed {config.seed}; offline data N = {config.offline.num_prompts} prompts x k = "
    f"{config.offline.generations_per_prompt}; online prompts: {config.online.prompts}; "
    f"loss {config.loss.name}; student init {config.student.init}, "
    f"{config.student.steps} steps of batch {config.student.batch_size}. "
    f"{teacher_sentence(summary['teacher_golden'], summary['student_init_golden'])} "
    f"{run_time_sentence(workdir, teacher, rows)}",
    "",
    *_regime_table(regimes),
    *_cost_table(regimes),
    *_definitions(config),
    *_views_table(regimes),
    "",
    settings_text(settings, metric),
    "",
  ]
  lines += samples.section(run_dir, tuple(regimes), task_vocabulary(config.task))
  if config.write_figures:
    lines += [f"![{name}]({name}.png)\n" for name in ("curves", "proxy_golden", "detector")]
  boundary.write_text(run_dir.report, "\n".join(lines))
  return summary


def _summary(
  config: RunConfig, rows: Mapping[str, list[dict[str, Any]]], teacher: Mapping[str, float]
) -> dict[str, Any]:
  """summary.json: the teacher's golden distances and each regime's run summary with its
  generation cost."""
  settings, metric = config.detection.detector, config.detection.metric
  teacher_golden = teacher["teacher/golden/fkl@oracle_samples"]
  regimes = {
    r: summarize_run(v, config.hacking_threshold_pct, settings, metric, teacher_golden)
    for r, v in rows.items()
  }
  for r, s in regimes.items():
    s.update(workload.generation_cost(config, r, s["final_step"], s["refreshed_at_step"]))
  starts = [s["student_init_golden"] for s in regimes.values()]
  return {
    "teacher_golden": teacher_golden,
    "student_init_golden": starts[0] if starts else None,
    "teacher": {
      "golden_fkl": teacher_golden,
      **{k: v for k, v in teacher.items() if k.startswith("teacher/")},
    },
    "regimes": regimes,
  }


def _regime_table(regimes: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """One row per regime: the oracle's outcome, golden and proxy, the detector."""
  return [
    "| regime | outcome (oracle) | golden start | golden min @ step | golden final | "
    "rise % | trend %/doubling [95% CI] | proxy at golden min -> final (change %) | "
    "detector |",
    "|---|---|---|---|---|---|---|---|---|",
    *(
      f"| {regime} | {s['outcome']} | {number(s['golden_start'])} | "
      f"{number(s['golden_min'])} @ {s['golden_min_step']} | "
      f"{number(s['golden_final'])} | {number(s['golden_rise_pct'], '+.1f')} | "
      f"{trend_text(s)} | "
      f"{number(s['proxy_at_golden_min'])} -> {number(s['proxy_final'])} "
      f"({number(s['proxy_change_after_min_pct'], '+.1f')}) | {verdict(s)} |"
      for regime, s in regimes.items()
    ),
  ]


def _cost_table(regimes: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """What each regime paid for its training data against the golden distance it reached."""
  return [
    "",
    "What each regime paid for its training data (samples drawn by the teacher and the "
    "student; the evaluations' are not counted) against the golden distance it reached:",
    "",
    "| regime | teacher samples | student samples | generation GFLOP | training GFLOP | "
    "golden min | golden final |",
    "|---|---|---|---|---|---|---|",
    *(
      f"| {regime} | {s['teacher_samples_generated']:,} | {s['student_samples_generated']:,} | "
      f"{s['generation_flops'] / 1e9:,.1f} | {s['training_flops'] / 1e9:,.1f} | "
      f"{number(s['golden_min'])} | {number(s['golden_final'])} |"
      for regime, s in regimes.items()
    ),
  ]


def _definitions(config: RunConfig) -> list[str]:
  """What golden, proxy, rise, change, trend and each outcome mean."""
  return [
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
  ]


def _views_table(regimes: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """The same verdict read with every divergence, per token and per sequence."""
  return [
    "",
    "The same verdict read with every divergence, per token and per sequence (`_seq`):",
    "",
    "| regime | view | sampled by | golden rise % | proxy change % | outcome |",
    "|---|---|---|---|---|---|",
    *(
      f"| {regime} | {view} | {v['sampled_by']} | "
      f"{number(v['golden_rise_pct'], '+.1f')} | "
      f"{number(v['proxy_change_after_min_pct'], '+.1f')} | {v['outcome']} |"
      for regime, s in regimes.items()
      for view, v in s["views"].items()
    ),
  ]


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


def pass_sentence(s: Mapping[str, Any]) -> str:
  """Whether and when the student passed its teacher on golden (`summaries.teacher_gap`), and
  where it stood at the held-out proxy's floor; '' where the teacher's level is unknown."""
  gap, teacher = s.get("teacher_gap_at_golden_min"), s.get("teacher_golden")
  if gap is None or teacher is None:
    return ""
  best = teacher - gap
  if s["teacher_pass_step"] is None:
    text = (
      f"The student never passed its teacher: its best golden {best:.3f} stayed "
      f"{-gap:.3f} above the teacher's {teacher:.3f}"
    )
  else:
    when = (
      "was better than its teacher from its start"
      if s["teacher_pass_step"] == 0
      else f"passed its teacher at step {s['teacher_pass_step']}"
    )
    text = (
      f"The student {when} (teacher golden {teacher:.3f}) and reached {best:.3f}, "
      f"{gap:.3f} below it"
    )
  floor = s["teacher_gap_at_proxy_floor"]
  side = "below" if floor > 0 else "above"
  return (
    f"{text}; at the held-out proxy's floor (step {s['proxy_floor_step']}) its golden was "
    f"{abs(floor):.3f} {side} the teacher's."
  )


def trend_text(s: Mapping[str, Any]) -> str:
  """'+1.23 [+0.45, +2.01]' (percent per doubling of the steps), or '–' without a trend."""
  if s.get("golden_trend_ci95") is None:
    return "–"
  low, high = s["golden_trend_ci95"]
  return f"{s['golden_trend_pct_per_doubling']:+.2f} [{low:+.2f}, {high:+.2f}]"


def wall_seconds(records: Sequence[Mapping[str, Any]]) -> float:
  """The wall time that stages took together, from their records' `seconds` and `finished_at`
  (seconds since the epoch): each stage is the span [finished_at - seconds, finished_at], and
  spans that overlap (stages side by side) count once and the gaps between spans (a workdir
  resumed later) not at all. A record without `finished_at` (written before it was recorded) adds
  its seconds, as if it ran alone."""
  spans = sorted(
    (r["finished_at"] - r["seconds"], r["finished_at"]) for r in records if "finished_at" in r
  )
  total = sum(r["seconds"] for r in records if "finished_at" not in r)
  end = -float("inf")
  for start, finish in spans:
    total += max(0.0, finish - max(start, end))
    end = max(end, finish)
  return total


def run_time_sentence(workdir: str, stage1: Mapping[str, Any], regimes: Sequence[str]) -> str:
  """'Run time: ...' from the seconds recorded by stage 1 and by each finished regime, and the
  wall time they took together (`wall_seconds`: regimes side by side overlap)."""
  parts = [("stage 1", stage1)]
  for regime in regimes:
    directory = RunDirectory(workdir).regime(regime)
    parts.append((regime, directory.done_record() if directory.finished else {}))
  known = [(name, record) for name, record in parts if record.get("seconds") is not None]
  text = ", ".join(f"{name} {record['seconds'] / 60:.1f} min" for name, record in known)
  wall = wall_seconds([record for _, record in known])
  return f"Run time: {text} (wall time {wall / 60:.1f} min)." if known else ""


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
  if s.get("refreshed_at_step") is not None:
    detector += (
      f", and the run went back to the parameters of step {s['best_predicted_step']} and "
      f"trained on fresh teacher samples from step {s['refreshed_at_step']} on "
      f"({s.get('teacher_samples_generated', 0):,} teacher samples in all)"
    )
  return f"{regime}: {what}; {detector}."


def number(value: float | None, spec: str = ".4f") -> str:
  return "–" if value is None else format(value, spec)


def verdict(s: Mapping[str, Any]) -> str:
  if s.get("refreshed_at_step") is not None:
    return f"fires @ {s['detected_step']}, refreshed"
  return f"fires @ {s['detected_step']}" if s["detected"] else "silent"
