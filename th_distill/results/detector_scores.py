"""The detector and its baselines (`METHODS`: the rules it must beat,
`detection.baselines`) scored against the oracle's verdicts on finished runs (`score`,
`quality`), their settings chosen on calibration seeds and scored on test seeds
(`calibrate_and_test`).

A method's settings are the grid point with the best F1 on the calibration runs, ties broken by
the smaller mean golden cost of the checkpoint it keeps, then the shorter lag. Its scores:
confusion counts, precision and recall with Clopper-Pearson 95% intervals, recall by outcome and
on the runs whose held-out proxy never rises, false alarms on the offline negatives apart (does
it fire on hacking, or on offline data?), the lag (firing evaluation minus golden-minimum evaluation), the golden cost of its `best_predicted`
checkpoint (100 * (golden there - golden min) / golden min) where it fired, and of the
checkpoint a user keeps on every run (its `best_predicted` where it fired, else the last).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import detection, errors
from th_distill.detection.baselines import (
  DetectorMethod,
  FixedFraction,
  Method,
  clopper_pearson,
)
from th_distill.results.detector_runs import Run
from th_distill.results.summaries import POSITIVE


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
