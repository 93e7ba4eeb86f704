"""The report of a study (many runs over seeds and variants): `summary.json`, the figures and
`report.md` of every arm, their seed means and their paired comparisons (`write_study_report`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import boundary
from th_distill.config.run_config import RunConfig
from th_distill.observing.metrics_io import read_metrics
from th_distill.results import figures, paired, plots, report
from th_distill.results.summaries import detector_quality, summarize_arm, summarize_run
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RunDirectory


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


COST_FIGURE = "cost.png"


def _step(step: int | None) -> str:
  """A step, or '–' for none."""
  return "–" if step is None else str(step)


def _count(value: float | None, unit: float = 1.0) -> str:
  """A mean count in `unit`s with thousands separators ('–' if unknown)."""
  return "–" if value is None else f"{value / unit:,.0f}"


def write_study_report(
  directory: str,
  title: str,
  runs: Mapping[str, Sequence[tuple[int, str]]],
  config: RunConfig,
  reference: str = "",
  teacher_golden: Mapping[str, float] | None = None,
  costs: Mapping[str, Mapping[str, float]] | None = None,
  references: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """The report of a study: `runs` maps an arm's label to its (seed, metrics.jsonl path) pairs;
  `teacher_golden` maps a metrics.jsonl path to its run's teacher golden distance, `costs` to
  its generation cost (`planning.workload.generation_cost`); `references` maps an arm to the
  arm it is paired with, if not `reference`.

  Writes `summary.json` (per arm: every seed's run summary and the means; `paired`: every arm's
  paired differences over seeds from the `reference` arm, by default the first;
  `th_distill.results.paired`), `curves.png`, `proxy_golden.png`, `detector.png`, with `costs`
  `cost.png` (golden against generation FLOPs), and `report.md` into
  `directory`; `config` gives the detector settings and the hacking threshold. Arms without any
  finished seed are left out.
  """
  settings, metric = config.detection.detector, config.detection.metric
  rows = {
    label: [(seed, read_metrics(path)) for seed, path in pairs] for label, pairs in runs.items()
  }
  rows = {label: [(s, r) for s, r in pairs if r] for label, pairs in rows.items()}
  rows = {label: pairs for label, pairs in rows.items() if pairs}
  arms = _arms(runs, rows, config, teacher_golden or {}, costs or {})
  quality = detector_quality([s for arm in arms.values() for s in arm["seeds"].values()])
  reference = reference or next(iter(arms))
  own = {a: r for a, r in (references or {}).items() if a in arms and r in arms}
  comparisons = paired.compare_arms(arms, reference, own) if reference in arms else {}
  summary = {
    "title": title,
    "arms": arms,
    "reference": reference,
    "references": own,
    "paired": comparisons,
    "detector": {"metric": metric, "settings": dataclasses.asdict(settings), **quality},
  }
  boundary.make_dirs(directory)
  checkpoints.write_json(RunDirectory(directory).summary, summary)
  _write_figures(directory, rows, arms, config, bool(costs))
  lines = [*_arm_table(title, arms, config)]
  if comparisons:
    lines += ["", "## Arms against each other", ""] + paired.table(comparisons, reference, own)
  lines += _detector_section(quality, config, bool(costs))
  lines += ["## Runs", ""] + [
    f"- {label}: "
    + ", ".join(
      f"seed {seed} `{os.path.dirname(path)}`" for seed, path in arm["metrics_files"].items()
    )
    for label, arm in arms.items()
  ]
  lines.append("")
  boundary.write_text(RunDirectory(directory).report, "\n".join(lines))
  return summary


def _arms(
  runs: Mapping[str, Sequence[tuple[int, str]]],
  rows: Mapping[str, Sequence[tuple[int, list[dict[str, Any]]]]],
  config: RunConfig,
  teacher_golden: Mapping[str, float],
  costs: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, Any]]:
  """{arm: its seeds' run summaries (with their costs), their means and metrics files}."""
  settings, metric = config.detection.detector, config.detection.metric
  arms = {}
  for label, pairs in rows.items():
    paths = dict(runs[label])
    seeds = {
      str(seed): {
        **summarize_run(
          r, config.hacking_threshold_pct, settings, metric, teacher_golden.get(paths[seed])
        ),
        **costs.get(paths[seed], {}),
      }
      for seed, r in pairs
    }
    arms[label] = {
      **summarize_arm(seeds),
      "metrics_files": {str(seed): path for seed, path in runs[label]},
    }
  return arms


def _write_figures(
  directory: str,
  rows: Mapping[str, Sequence[tuple[int, list[dict[str, Any]]]]],
  arms: Mapping[str, Mapping[str, Any]],
  config: RunConfig,
  with_costs: bool,
) -> None:
  """curves.png, proxy_golden.png and detector.png (the teachers' mean golden level drawn), and
  with the arms' costs cost.png."""
  levels = [
    s["teacher_golden"]
    for arm in arms.values()
    for s in arm["seeds"].values()
    if s["teacher_golden"] is not None
  ]
  figures.write_figures(
    directory,
    {label: [r for _, r in pairs] for label, pairs in rows.items()},
    config.detection.detector,
    config.detection.metric,
    float(np.mean(levels)) if levels else None,
  )
  if with_costs:
    keys = ("generation_flops", "golden_min", "golden_final", "golden_trend_pct_per_doubling")
    plots.plot_cost(
      {
        label: {k: [s.get(k) for s in arm["seeds"].values()] for k in keys}
        for label, arm in arms.items()
      },
      os.path.join(directory, COST_FIGURE),
    )


def _arm_table(title: str, arms: Mapping[str, Mapping[str, Any]], config: RunConfig) -> list[str]:
  """The report's title, the definitions of its columns and one row per arm."""
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
    "doubling of the steps, with the seeds whose 95% interval lies above zero (rising); "
    "gap = teacher golden − the student's golden minimum (positive: the student passed its "
    "teacher), with the step of each seed's first evaluation below the teacher (– never).",
    "",
    "| arm | seeds | teacher golden | golden start | golden min | golden min step | "
    "golden final | rise % | trend %/doubling (rising) | gap at golden min (pass steps) | "
    "proxy final | proxy change % | outcome (oracle) | detector | teacher samples | "
    "student samples | generation GFLOP |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  return lines + [_arm_row(label, arm) for label, arm in arms.items()]


def _arm_row(label: str, arm: Mapping[str, Any]) -> str:
  seeds = list(arm["seeds"].values())
  fired = ", ".join(str(s["detected_step"]) if s["detected"] else "–" for s in seeds)
  outcomes = ", ".join(f"{o.replace('_', ' ')} {n}" for o, n in arm["outcomes"].items() if n)
  rising = sum(s["golden_trend_rising"] for s in seeds)
  return (
    f"| {label} | {len(seeds)} | {_mean_sd([s['teacher_golden'] for s in seeds])} | "
    f"{_mean_sd([s['student_init_golden'] for s in seeds])} | "
    f"{_mean_sd([s['golden_min'] for s in seeds])} | "
    f"{', '.join(str(s['golden_min_step']) for s in seeds)} | "
    f"{_mean_sd([s['golden_final'] for s in seeds])} | "
    f"{_mean_sd([s['golden_rise_pct'] for s in seeds], '+.1f')} | "
    f"{_mean_sd([s['golden_trend_pct_per_doubling'] for s in seeds], '+.2f')} "
    f"({rising}/{len(seeds)}) | "
    f"{_mean_sd([s.get('teacher_gap_at_golden_min') for s in seeds], '+.3f')} "
    f"({', '.join(_step(s.get('teacher_pass_step')) for s in seeds)}) | "
    f"{_mean_sd([s['proxy_final'] for s in seeds])} | "
    f"{_mean_sd([s['proxy_change_after_min_pct'] for s in seeds], '+.1f')} | {outcomes} | "
    f"{arm['detected_runs']}/{len(seeds)} ({fired}) | "
    f"{_count(arm['mean']['teacher_samples_generated'])} | "
    f"{_count(arm['mean']['student_samples_generated'])} | "
    f"{_count(arm['mean']['generation_flops'], 1e9)} |"
  )


def _detector_section(quality: Mapping[str, Any], config: RunConfig, with_costs: bool) -> list[str]:
  """The detector against the oracle, the settings, and the figures."""
  lag = quality["lag_steps"]
  return [
    "",
    "## Detector against the oracle",
    "",
    f"{quality['runs']} runs (positive: golden rose by the threshold, teacher hacking "
    f"or over-fitting): {quality['true_positives']} true positives, "
    f"{quality['false_positives']} false positives, {quality['false_negatives']} false "
    f"negatives, {quality['true_negatives']} true negatives. Firing step minus golden "
    f"minimum step on true positives: {lag if lag else 'none'} "
    f"(in evaluations: {quality['lag_evals'] if lag else 'none'})."
    + (
      f" Left out: {quality['refreshed_runs']} runs the detector switched to fresh data "
      "(`detection.on_detect = 'refresh'`)."
      if quality["refreshed_runs"]
      else ""
    ),
    report.settings_text(config.detection.detector, config.detection.metric),
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
    *(
      [
        "Golden distance against what each arm paid to generate its training data (mean "
        "over seeds, bars one standard deviation):",
        "",
        f"![cost]({COST_FIGURE})",
        "",
      ]
      if with_costs
      else []
    ),
  ]
