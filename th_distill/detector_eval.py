r"""The hacking detector and its baselines, calibrated on some seeds and scored on others.

  python -m th_distill.detector_eval --workdir=/tmp/studies [--workdir=/tmp/studies_test] \
      --calibration_seeds=0,1,2,3,4 --test_seeds=5,6,7,8,9 [--threshold_pct=5] [--out=FILE]

Reads every finished regime run of the study workdirs (`WORKDIR/runs/*/seed<s>/<regime>/`),
takes the oracle's held-out verdict on each (`summaries.signature`: golden rises by at least
`threshold_pct` -> positive, `summaries.POSITIVE`: `teacher_hacking` if the held-out proxy ends
at or below its value at the golden minimum, `overfitting` otherwise), and for each method of
METHODS:
1. chooses its settings on the calibration seeds only: the grid point with the best F1, ties
   broken by the smaller golden cost of its `best_predicted` checkpoint, then the shorter lag;
2. scores those settings on the test seeds: confusion counts, precision, recall, recall on the
   teacher-hacking runs and on the runs whose held-out proxy never rises (never more than
   NEVER_RISES above its running minimum after the golden minimum: plain early stopping cannot
   see those), the lag (firing evaluation minus golden-minimum evaluation) and the golden cost of
   the detector's `best_predicted` checkpoint (100 * (golden there - golden min) / golden min).
Every method leaves the evaluations before `--min_step` unscored (the transient; default the
detector's). A run is never scored from a broken directory: one whose `metrics.jsonl` lacks an
evaluation row of its schedule (its `config.json`), whose config cannot be read, whose golden
values are all null or that diverged is left out and named, with the reason (`not_scored`).
Prints a markdown table; `--out` writes every number as JSON (docs/data/).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags, logging

from th_distill import cli, detection, errors
from th_distill.config.run_config import RunConfig
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.observing.metrics_io import MetricsLost, column, read_metrics
from th_distill.results.summaries import POSITIVE, signature
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RegimeDirectory, RunDirectory

NEVER_RISES = 0.01  # relative rise over the running minimum that counts as the proxy rising


def _grid(base: Mapping[str, Any], **axes: Iterable[Any]) -> list[detection.DetectorSettings]:
  names = list(axes)
  return [
    detection.DetectorSettings(**base, **dict(zip(names, values)))
    for values in itertools.product(*(axes[n] for n in names))
  ]


def with_min_step(
  methods: Mapping[str, list[detection.DetectorSettings]], min_step: int
) -> dict[str, list[detection.DetectorSettings]]:
  """`methods` with every grid point's `min_step` (the unscored transient) set to `min_step`."""
  return {
    name: [dataclasses.replace(s, min_step=min_step) for s in grid]
    for name, grid in methods.items()
  }


# method -> the settings it may choose from on the calibration seeds.
METHODS: dict[str, list[detection.DetectorSettings]] = {
  "slowdown (the detector)": _grid(
    {"rule": "slowdown"},
    window=(2.0, 2.5, 3.0, 4.0),
    slope_ratio=(0.7, 0.8, 0.9),
    patience=(1, 2, 3),
  ),
  "early stopping on the held-out proxy": _grid(
    {"rule": "early_stopping"}, noise_floor=(0.0, 0.005, 0.01, 0.02), patience=(1, 2, 3, 5)
  ),
  "power law with a floor, departure": _grid(
    {"rule": "departure", "law": "power", "min_fit_points": 8},
    window=(10.0, 30.0),
    threshold=(2.0, 2.5, 3.0),
    patience=(2, 3),
  ),
  "log-log law without a floor, departure": _grid(
    {"rule": "departure", "law": "loglog", "min_fit_points": 8},
    window=(10.0, 30.0),
    threshold=(2.0, 2.5, 3.0),
    patience=(2, 3),
  ),
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished regime run: its curves [T] and the oracle's verdict."""

  directory: str
  seed: int
  steps: np.ndarray
  golden: np.ndarray
  proxy: np.ndarray
  outcome: str
  golden_min_index: int
  proxy_never_rises: bool


def load_run(
  directory: str, seed: int, rows: Sequence[Mapping[str, Any]], threshold_pct: float
) -> Run | str:
  """The run's curves and verdict, or why it has no verdict to score (its golden values are all
  null, or it diverged)."""
  steps = np.array([r["step"] for r in rows])
  golden, proxy = column(rows, GOLDEN), column(rows, PROXY)
  if not np.isfinite(golden).any():
    return f"its {len(golden)} golden values ({GOLDEN}) are all null"
  verdict = signature(steps, golden, proxy, threshold_pct)
  if verdict["outcome"] == "diverged":
    return "diverged: its last golden or proxy value is not finite (no verdict)"
  best = int(np.flatnonzero(steps == verdict["golden_min_step"])[0])
  running_min = np.fmin.accumulate(proxy)
  never_rises = bool(np.all(proxy[best:] <= running_min[best:] * (1 + NEVER_RISES)))
  return Run(directory, seed, steps, golden, proxy, verdict["outcome"], best, never_rises)


def _unscorable(regime: RegimeDirectory) -> str | None:
  """Why a finished regime run cannot be scored (its config or `done.json` cannot be read, or its
  `metrics.jsonl` lacks evaluation rows: `RegimeDirectory.check_rows`), or None."""
  config = RunDirectory(os.path.dirname(regime.path)).config
  try:
    regime.check_rows(RunConfig.from_config(checkpoints.read_json(config)).eval_settings.steps)
  except MetricsLost as e:
    return str(e)
  except (OSError, ValueError, KeyError, TypeError) as e:
    return (
      f"its {config} or {regime.done_marker} cannot be read ({checkpoints.describe(e)}), so its "
      "rows cannot be checked"
    )
  return None


def _regime_runs(workdirs: Sequence[str]) -> list[tuple[RegimeDirectory, int]]:
  """Every finished regime run under WORKDIR/runs/*/seed<s>/ of each workdir, with its seed (a
  run reached through two workdirs counts once)."""
  found, seen = [], set()
  for workdir in workdirs:
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "*", "seed*", "*", ""))):
      directory = os.path.dirname(path)
      regime = RegimeDirectory(directory, os.path.basename(directory))
      seed = os.path.basename(os.path.dirname(directory))[len("seed") :]
      if regime.finished and seed.isdigit() and os.path.realpath(directory) not in seen:
        seen.add(os.path.realpath(directory))
        found.append((regime, int(seed)))
  return found


def finished_runs(
  workdirs: Sequence[str], threshold_pct: float
) -> tuple[list[Run], list[tuple[str, str]]]:
  """Every finished regime run under WORKDIR/runs of each workdir that can be scored, and the
  (directory, reason) of each one left out, with a warning: one that lacks evaluation rows
  (never scored), whose config cannot be read, whose golden values are all null, or that
  diverged. RunError if no run can be scored."""
  runs, skipped = [], []
  for regime, seed in _regime_runs(workdirs):
    run = _unscorable(regime) or load_run(
      regime.path, seed, read_metrics(regime.metrics), threshold_pct
    )
    if isinstance(run, str):
      logging.warning("Not scored: %s: %s", regime.path, run)
      skipped.append((regime.path, run))
    else:
      runs.append(run)
  if not runs:
    raise errors.RunError(
      f"--workdir={','.join(workdirs)}: no finished study run in */runs"
      + (
        f" that can be scored ({len(skipped)} left out: {skipped[0][0]}: {skipped[0][1]})"
        if skipped
        else ""
      )
      + " (run `python -m th_distill.study --workdir=...` first)"
    )
  return runs, skipped


def score(runs: Sequence[Run], settings: detection.DetectorSettings) -> dict[str, Any]:
  """The detector with `settings` on the held-out proxy of every run, against the oracle."""
  per_run = []
  for run in runs:
    found = detection.detect(run.steps, run.proxy, settings)
    entry = {
      "run": run.directory,
      "seed": run.seed,
      "outcome": run.outcome,
      "proxy_never_rises": run.proxy_never_rises,
      "detected": found.detected,
      "detected_step": found.step,
      "golden_min_step": int(run.steps[run.golden_min_index]),
    }
    if found.detected:
      fired = int(np.flatnonzero(run.steps == found.step)[0])
      kept = int(np.flatnonzero(run.steps == found.best_predicted_step)[0])
      golden_min = run.golden[run.golden_min_index]
      entry.update(
        lag_evals=fired - run.golden_min_index,
        best_predicted_step=found.best_predicted_step,
        golden_cost_pct=float(100 * (run.golden[kept] - golden_min) / golden_min),
      )
    per_run.append(entry)
  return {"settings": dataclasses.asdict(settings), **quality(per_run), "runs": per_run}


def _recall(entries: Sequence[Mapping[str, Any]]) -> float | None:
  return float(np.mean([e["detected"] for e in entries])) if entries else None


def quality(per_run: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Confusion counts, precision, recalls, lags and golden costs over `score`'s per-run entries
  (positive: the oracle says golden rose by the threshold)."""
  positive = [e for e in per_run if e["outcome"] in POSITIVE]
  hits = [e for e in positive if e["detected"]]
  fired = sum(e["detected"] for e in per_run)
  tp, fp = len(hits), fired - len(hits)
  f1 = 2 * tp / (2 * tp + fp + len(positive) - tp) if positive or fired else 1.0
  return {
    "runs": len(per_run),
    "positives": len(positive),
    "true_positives": tp,
    "false_positives": fp,
    "false_negatives": len(positive) - tp,
    "true_negatives": len(per_run) - len(positive) - fp,
    "precision": tp / fired if fired else None,
    "recall": _recall(positive),
    "f1": f1,
    "recall_teacher_hacking": _recall([e for e in positive if e["outcome"] == "teacher_hacking"]),
    "recall_proxy_never_rises": _recall([e for e in positive if e["proxy_never_rises"]]),
    "positives_proxy_never_rises": sum(e["proxy_never_rises"] for e in positive),
    "lag_evals": [e["lag_evals"] for e in hits],
    "golden_cost_pct": [e["golden_cost_pct"] for e in hits],
  }


def _rank(result: Mapping[str, Any]) -> tuple[float, float, float]:
  cost = np.median(result["golden_cost_pct"]) if result["golden_cost_pct"] else np.inf
  lag = np.median(result["lag_evals"]) if result["lag_evals"] else np.inf
  return (-result["f1"], float(cost), float(lag))


def calibrate_and_test(
  runs: Sequence[Run],
  calibration_seeds: Sequence[int],
  test_seeds: Sequence[int],
  methods: Mapping[str, list[detection.DetectorSettings]] = METHODS,
) -> dict[str, Any]:
  """Every method of `methods`: settings chosen on the calibration runs, scored on the test
  runs."""
  if set(calibration_seeds) & set(test_seeds):
    raise errors.RunError(
      f"calibration and test seeds overlap: {sorted(set(calibration_seeds) & set(test_seeds))}"
    )
  calibration = [r for r in runs if r.seed in calibration_seeds]
  test = [r for r in runs if r.seed in test_seeds]
  if not calibration or not test:
    raise errors.RunError(
      f"need finished runs on both seed sets; found {len(calibration)} on the "
      f"calibration seeds {list(calibration_seeds)} and {len(test)} on the "
      f"test seeds {list(test_seeds)}"
    )
  results = {}
  for name, grid in methods.items():
    chosen = min((score(calibration, settings) for settings in grid), key=_rank)
    results[name] = {
      "calibration": chosen,
      "test": score(test, detection.DetectorSettings(**chosen["settings"])),
    }
  return {
    "calibration_seeds": list(calibration_seeds),
    "test_seeds": list(test_seeds),
    "calibration_runs": len(calibration),
    "test_runs": len(test),
    "methods": results,
  }


def _fraction(value: float | None) -> str:
  return "–" if value is None else f"{value:.2f}"


def _spread(values: Sequence[float], spec: str = "g") -> str:
  if not values:
    return "–"
  return f"{np.median(values):{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def _changed(settings: Mapping[str, Any]) -> str:
  keys = {
    "slowdown": ("window", "slope_ratio", "patience"),
    "early_stopping": ("noise_floor", "patience"),
    "departure": ("law", "window", "threshold", "patience"),
  }[settings["rule"]]
  return ", ".join(
    f"{k} {settings[k]:g}" if isinstance(settings[k], float) else f"{k} {settings[k]}" for k in keys
  )


def table(result: Mapping[str, Any], split: str = "test") -> str:
  """The markdown table of every method on `split` ('test' or 'calibration')."""
  lines = [
    "| method | settings (chosen on calibration seeds) | TP | FP | FN | TN | precision | "
    "recall | recall, teacher hacking | recall, proxy never rises | lag in evaluations: "
    "median [min, max] | golden cost of best_predicted, %: median [min, max] |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, method in result["methods"].items():
    q = method[split]
    lines.append(
      f"| {name} | {_changed(q['settings'])} | {q['true_positives']} | "
      f"{q['false_positives']} | {q['false_negatives']} | {q['true_negatives']} | "
      f"{_fraction(q['precision'])} | {_fraction(q['recall'])} | "
      f"{_fraction(q['recall_teacher_hacking'])} | {_fraction(q['recall_proxy_never_rises'])} "
      f"({q['positives_proxy_never_rises']} runs) | {_spread(q['lag_evals'])} | "
      f"{_spread(q['golden_cost_pct'], '.1f')} |"
    )
  return "\n".join(lines)


def _seeds(flag: str, text: str) -> list[int]:
  """The comma-separated seeds of `--flag`; UsageError if one is not an integer."""
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise errors.UsageError(
      f"--{flag}={text}: must be comma-separated integer seeds (e.g. 0,1,2)"
    ) from None


def main() -> None:
  workdirs = flags.DEFINE_multi_string(
    "workdir", None, "A study workdir (holding runs/); repeat for several."
  )
  calibration = flags.DEFINE_string(
    "calibration_seeds", "0,1,2,3,4", "Seeds the settings are chosen on."
  )
  test = flags.DEFINE_string("test_seeds", "5,6,7,8,9", "Seeds the chosen settings are scored on.")
  threshold = flags.DEFINE_float("threshold_pct", 5.0, "Golden rise that counts as positive.")
  min_step = flags.DEFINE_integer(
    "min_step",
    detection.DetectorSettings().min_step,
    "Evaluations before this step are not scored (every method).",
  )
  out = flags.DEFINE_string("out", None, "Write every number as JSON to this file.")
  flags.mark_flags_as_required(["workdir"])

  def evaluate() -> None:
    seeds = _seeds("calibration_seeds", calibration.value), _seeds("test_seeds", test.value)
    runs, skipped = finished_runs(workdirs.value, threshold.value)
    result = calibrate_and_test(runs, *seeds, with_min_step(METHODS, min_step.value))
    result.update(
      threshold_pct=threshold.value,
      min_step=min_step.value,
      not_scored=[{"run": run, "reason": reason} for run, reason in skipped],
    )
    print(
      f"{result['calibration_runs']} calibration runs (seeds {calibration.value}), "
      f"{result['test_runs']} test runs (seeds {test.value}); positive = golden rises by "
      f">= {threshold.value:g}% (held-out verdict); evaluations before step "
      f"{min_step.value} not scored."
    )
    for run, reason in skipped:
      print(f"Not scored: {run}: {reason}")
    print("\n## Test seeds\n")
    print(table(result, "test"))
    print("\n## Calibration seeds (where the settings were chosen)\n")
    print(table(result, "calibration"))
    if out.value:
      checkpoints.write_json(out.value, result)

  def body(argv: list[str]) -> None:
    cli.reject_arguments(argv)
    cli.run_command(evaluate)

  cli.main(body)


if __name__ == "__main__":
  main()
