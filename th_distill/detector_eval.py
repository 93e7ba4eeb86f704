r"""The hacking detector and its baselines, calibrated on some seeds and scored on others.

  python -m th_distill.detector_eval --workdir=/tmp/studies [--workdir=/tmp/studies_test] \
      --calibration_seeds=0,1,2,3,4 --test_seeds=5,6,7,8,9 [--threshold_pct=5] [--out=FILE]

Reads every finished regime run of the study workdirs (`WORKDIR/runs/*/seed<s>/<regime>/`),
takes the oracle's held-out verdict on each (`summaries.signature`: golden rises by at least
`threshold_pct` -> positive, `summaries.POSITIVE`: `teacher_hacking`, `overfitting` or
`regression`), and for each method of METHODS (the detector, and the rules it must beat:
`detection.baselines`):
1. chooses its settings on the calibration seeds only: the grid point with the best F1, ties
   broken by the smaller mean golden cost of the checkpoint it keeps, then the shorter lag;
2. scores those settings on the test seeds: confusion counts, precision and recall with
   Clopper-Pearson 95% intervals, recall by outcome and on the runs whose held-out proxy never
   rises (never more than NEVER_RISES above its running minimum after the golden minimum:
   plain early stopping cannot see those), false alarms on the offline negatives apart (does it
   fire on hacking, or on offline data?), the lag (firing evaluation minus golden-minimum
   evaluation), the golden cost of its `best_predicted` checkpoint (100 * (golden there - golden
   min) / golden min) where it fired, and of the checkpoint a user keeps on every run (its
   `best_predicted` where it fired, else the last).
Every method leaves the evaluations before `--min_step` unscored (the transient; default the
detector's). A run is never scored from a broken directory: one whose `metrics.jsonl` lacks an
evaluation row of its schedule (its `config.json`), whose config cannot be read, whose golden
values are all null, that diverged or that refreshed its data (`detection.on_detect =
'refresh'`) is left out and named, with the reason (`not_scored`).
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
from th_distill.detection.baselines import (
  DetectorMethod,
  FixedFraction,
  Method,
  clopper_pearson,
)
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.observing.metrics_io import MetricsLost, column, read_metrics
from th_distill.results.summaries import POSITIVE, refreshed_at_step, signature
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RegimeDirectory, RunDirectory

NEVER_RISES = 0.01  # relative rise over the running minimum that counts as the proxy rising


def _grid(base: Mapping[str, Any], rollback: float = 0.0, **axes: Iterable[Any]) -> list[Method]:
  names = list(axes)
  return [
    DetectorMethod(
      detection.DetectorSettings(**base, **dict(zip(names, values))), rollback=rollback
    )
    for values in itertools.product(*(axes[n] for n in names))
  ]


def with_min_step(methods: Mapping[str, list[Method]], min_step: int) -> dict[str, list[Method]]:
  """`methods` with every detector grid point's `min_step` (the unscored transient) set to
  `min_step`."""
  return {
    name: [m.with_min_step(min_step) if isinstance(m, DetectorMethod) else m for m in grid]
    for name, grid in methods.items()
  }


EARLY_STOPPING = {"noise_floor": (0.0, 0.005, 0.01, 0.02), "patience": (1, 2, 3, 5)}
# method -> the settings it may choose from on the calibration seeds.
METHODS: dict[str, list[Method]] = {
  "slowdown (the detector)": _grid(
    {"rule": "slowdown"},
    window=(2.0, 2.5, 3.0, 4.0),
    slope_ratio=(0.7, 0.8, 0.9),
    patience=(1, 2, 3),
  ),
  "slowdown as shipped (the config's defaults, not re-chosen)": [
    DetectorMethod(detection.DetectorSettings())
  ],
  "early stopping on the held-out proxy": _grid({"rule": "early_stopping"}, **EARLY_STOPPING),
  "early stopping, the detector's roll-back": _grid(
    {"rule": "early_stopping"}, rollback=3.0, **EARLY_STOPPING
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
  "fixed fraction (no detection)": [FixedFraction(f) for f in (0.1, 0.2, 0.25, 0.33, 0.5, 0.75)],
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished regime run: its curves [T] and the oracle's verdict."""

  directory: str
  seed: int
  regime: str
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
  null, it diverged, or its detector switched it to fresh data)."""
  refreshed = refreshed_at_step(rows)
  if refreshed is not None:
    return (
      f"it refreshed its data at step {refreshed} (detection.on_detect = 'refresh'): its curve "
      "after the switch is not its regime's"
    )
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
  regime = os.path.basename(os.path.normpath(directory))
  return Run(directory, seed, regime, steps, golden, proxy, verdict["outcome"], best, never_rises)


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


def _cost(run: Run, step: int) -> float:
  """100 * (golden at `step` - golden minimum) / golden minimum."""
  golden_min = run.golden[run.golden_min_index]
  return float(100 * (run.golden[np.flatnonzero(run.steps == step)[0]] - golden_min) / golden_min)


def score(runs: Sequence[Run], method: Method) -> dict[str, Any]:
  """`method` on the held-out proxy of every run, against the oracle. Each run's kept
  checkpoint is the method's when it acts, else the run's last; its golden cost is
  `_cost` there."""
  per_run = []
  for run in runs:
    decision = method.decide(run.steps, run.proxy)
    kept = decision.kept_step if decision.fired else int(run.steps[-1])
    entry = {
      "run": run.directory,
      "seed": run.seed,
      "regime": run.regime,
      "outcome": run.outcome,
      "proxy_never_rises": run.proxy_never_rises,
      "detected": decision.fired,
      "detected_step": decision.step,
      "golden_min_step": int(run.steps[run.golden_min_index]),
      "kept_step": kept,
      "kept_cost_pct": _cost(run, kept),
    }
    if decision.fired:
      fired = int(np.flatnonzero(run.steps == decision.step)[0])
      entry.update(
        lag_evals=fired - run.golden_min_index,
        best_predicted_step=decision.kept_step,
        golden_cost_pct=_cost(run, decision.kept_step),
      )
    per_run.append(entry)
  return {"settings": method.to_json(), **quality(per_run), "runs": per_run}


def _recall(entries: Sequence[Mapping[str, Any]]) -> float | None:
  return float(np.mean([e["detected"] for e in entries])) if entries else None


def _mean(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if values else None


def quality(per_run: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Confusion counts, precision and recall with their Clopper-Pearson 95% intervals, recalls
  by outcome and on the runs whose proxy never rises, false positives among the offline
  negatives, lags, and golden costs (of `best_predicted` where it fired; of the kept
  checkpoint on every run) over `score`'s per-run entries (positive: the oracle says golden
  rose by the threshold)."""
  positive = [e for e in per_run if e["outcome"] in POSITIVE]
  negative = [e for e in per_run if e["outcome"] not in POSITIVE]
  hits = [e for e in positive if e["detected"]]
  fired = sum(e["detected"] for e in per_run)
  tp, fp = len(hits), fired - len(hits)
  f1 = 2 * tp / (2 * tp + fp + len(positive) - tp) if positive or fired else 1.0
  offline_negative = [e for e in negative if e.get("regime") == "offline"]
  by_outcome = {
    f"recall_{outcome}": _recall([e for e in positive if e["outcome"] == outcome])
    for outcome in POSITIVE
  }
  return {
    "runs": len(per_run),
    "positives": len(positive),
    "true_positives": tp,
    "false_positives": fp,
    "false_negatives": len(positive) - tp,
    "true_negatives": len(negative) - fp,
    "precision": tp / fired if fired else None,
    "precision_ci95": clopper_pearson(tp, fired),
    "recall": _recall(positive),
    "recall_ci95": clopper_pearson(tp, len(positive)),
    "f1": f1,
    **by_outcome,
    "positives_by_outcome": {o: sum(e["outcome"] == o for e in positive) for o in POSITIVE},
    "recall_proxy_never_rises": _recall([e for e in positive if e["proxy_never_rises"]]),
    "positives_proxy_never_rises": sum(e["proxy_never_rises"] for e in positive),
    "offline_negatives": len(offline_negative),
    "false_positives_offline": sum(e["detected"] for e in offline_negative),
    "lag_evals": [e["lag_evals"] for e in hits],
    "golden_cost_pct": [e["golden_cost_pct"] for e in hits],
    "kept_cost_pct_mean": {
      "positives": _mean([e["kept_cost_pct"] for e in positive]),
      "negatives": _mean([e["kept_cost_pct"] for e in negative]),
      "all": _mean([e["kept_cost_pct"] for e in per_run]),
    },
  }


def _rank(result: Mapping[str, Any]) -> tuple[float, float, float]:
  """F1 first; ties: the smaller mean golden cost of the kept checkpoint over every run, then
  the shorter lag."""
  cost = result["kept_cost_pct_mean"]["all"]
  lag = np.median(result["lag_evals"]) if result["lag_evals"] else np.inf
  return (-result["f1"], float(np.inf if cost is None else cost), float(lag))


def calibrate_and_test(
  runs: Sequence[Run],
  calibration_seeds: Sequence[int],
  test_seeds: Sequence[int],
  methods: Mapping[str, list[Method]] = METHODS,
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
    scored = [(score(calibration, method), method) for method in grid]
    chosen, method = min(scored, key=lambda pair: _rank(pair[0]))
    results[name] = {
      "description": method.describe(),
      "calibration": chosen,
      "test": score(test, method),
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


def _interval(value: float | None, ci: Sequence[float]) -> str:
  if value is None:
    return "–"
  return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _spread(values: Sequence[float], spec: str = "g") -> str:
  if not values:
    return "–"
  return f"{np.median(values):{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def _recall_of(q: Mapping[str, Any], outcome: str) -> str:
  count = q["positives_by_outcome"][outcome]
  return f"{_fraction(q[f'recall_{outcome}'])} ({count})"


def table(result: Mapping[str, Any], split: str = "test") -> str:
  """The markdown tables of every method on `split` ('test' or 'calibration'): detection, then
  the golden cost of the checkpoint each method keeps."""
  lines = [
    "| method | settings (chosen on calibration seeds) | TP | FP | FN | TN | precision [95% CI] | "
    "recall [95% CI] | recall: teacher hacking | overfitting | regression | proxy never "
    "rises | FP on offline negatives | lag in evaluations: median [min, max] | golden cost "
    "of best_predicted, %: median [min, max] |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, method in result["methods"].items():
    q = method[split]
    lines.append(
      f"| {name} | {method['description']} | {q['true_positives']} | "
      f"{q['false_positives']} | {q['false_negatives']} | {q['true_negatives']} | "
      f"{_interval(q['precision'], q['precision_ci95'])} | "
      f"{_interval(q['recall'], q['recall_ci95'])} | "
      + " | ".join(_recall_of(q, o) for o in ("teacher_hacking", "overfitting", "regression"))
      + f" | {_fraction(q['recall_proxy_never_rises'])} ({q['positives_proxy_never_rises']}) | "
      f"{q['false_positives_offline']} of {q['offline_negatives']} | {_spread(q['lag_evals'])} | "
      f"{_spread(q['golden_cost_pct'], '.1f')} |"
    )
  lines += [
    "",
    "| method | golden cost of the kept checkpoint, % (mean): positives | negatives | all runs |",
    "|---|---|---|---|",
  ]
  for name, method in result["methods"].items():
    cost = method[split]["kept_cost_pct_mean"]
    lines.append(
      f"| {name} | "
      + " | ".join(
        "–" if cost[k] is None else f"{cost[k]:.2f}" for k in ("positives", "negatives", "all")
      )
      + " |"
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
