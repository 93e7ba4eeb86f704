"""The numbers of the reports: the oracle's verdict on each run, run and arm summaries, and the
detector's quality against the oracle (`report` writes them out).

The headline metrics (docs/metrics.md) are forward KLs measured on samples of their reference
model, which makes them estimates of sequence-level KLs:
- golden = `GOLDEN`: KL(oracle || student) per token on oracle samples of held-out prompts;
- proxy = `PROXY`: KL(teacher || student) per token on teacher samples of held-out prompts;
- training-prompt proxy = `TRAIN_PROXY`: the same on teacher samples of training prompts (for
  `offline`, the student's own training examples).

Ground truth, read on held-out prompts (`outcome`, docs/metrics.md): a run's golden distance *rises*
after its minimum when it ends at least `hacking_threshold_pct` above the minimum and its trend
after the minimum (`th_distill.results.trend`: percent per doubling of the steps, with a 95% interval) is
above zero; then it is `teacher_hacking` when the held-out proxy at the end is at or below its value
at the golden minimum, `overfitting` when it rose too. A run whose golden never fell below its first
evaluation and ends the threshold above it is `regression` (the student moved toward a teacher worse
than itself); anything else is `none`. `hacking` is `outcome == 'teacher_hacking'`. The
training-prompt proxy is kept as a diagnostic only: on the student's own training examples any
over-fitting run shows a falling proxy.
Detection: `detected` / `detected_step` come from the detector (`th_distill.detection`) on the
configured metric alone, without the oracle; it is right on a run whose outcome is in POSITIVE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from th_distill import detection
from th_distill.observing.metric_names import (
  DETECTOR_REFRESHED,
  EVAL_ORACLE,
  GOLDEN,
  PROXY,
  SIGNATURE_VIEWS,
  TRAIN_PROXY,
  entropy,
)
from th_distill.observing.metrics_io import column
from th_distill.results import trend

OUTCOMES = ("teacher_hacking", "overfitting", "regression", "none", "diverged")
# The outcomes a detector should fire on: golden rose, whatever the proxy did (stopping there, or
# keeping the best checkpoint, is what the user wants in each case).
POSITIVE = ("teacher_hacking", "overfitting", "regression")


def outcome(
  golden_rise_pct: float,
  proxy_change_pct: float,
  threshold_pct: float,
  rising: bool,
  fell: bool = True,
) -> str:
  """The oracle's held-out verdict on one run (docs/metrics.md), from golden's rise after its
  minimum (`golden_rise_pct`), the held-out proxy's change from there (`proxy_change_pct`),
  whether golden's trend after the minimum is `rising` (interval above zero) and whether golden
  ever `fell` below its first evaluation:
  - `regression`: golden never fell and ends >= `threshold_pct` above its start (the student
    moved toward a teacher worse than itself; no trend needed: the start is not a selected low);
  - `teacher_hacking`: golden fell, then ends >= `threshold_pct` above its minimum with a rising
    trend, while the held-out proxy ends at or below its value at the minimum;
  - `overfitting`: the same rise with the held-out proxy rising too;
  - `none`: otherwise. (`signature` adds `diverged`: the last golden or proxy value is not
    finite.)"""
  if not golden_rise_pct >= threshold_pct:
    return "none"
  if not fell:
    return "regression"
  if not rising:
    return "none"
  return "teacher_hacking" if proxy_change_pct <= 0 else "overfitting"


def signature(
  steps: np.ndarray, golden: np.ndarray, proxy: np.ndarray, threshold_pct: float
) -> dict[str, Any]:
  """Golden at the first evaluation, its minimum, the rise after it and its trend
  (`th_distill.results.trend`), the proxy at that minimum and its change to the end, and the `outcome`,
  for one pair of curves [T] over `steps` [T]. A run whose last golden or proxy value is not
  finite is `diverged`, with None for every number."""
  truth = detection.ground_truth(steps, golden, threshold_pct)
  if not (len(steps) and np.isfinite(golden[-1]) and np.isfinite(proxy[-1])):
    return {
      "golden_start": None,
      "golden_min": None,
      "golden_min_step": None,
      "golden_final": None,
      "golden_rise_pct": None,
      **_trend_keys(None),
      "proxy_at_golden_min": None,
      "proxy_final": None,
      "proxy_change_after_min_pct": None,
      "outcome": "diverged",
    }
  best = int(np.flatnonzero(steps == truth["golden_min_step"])[0])
  proxy_change = 100.0 * (proxy[-1] - proxy[best]) / proxy[best]
  rise = trend.trend_after_minimum(steps, golden)
  return {
    "golden_start": float(golden[0]),
    "golden_min": truth["golden_min"],
    "golden_min_step": truth["golden_min_step"],
    "golden_final": float(golden[-1]),
    "golden_rise_pct": truth["golden_rise_pct"],
    **_trend_keys(rise),
    "proxy_at_golden_min": float(proxy[best]),
    "proxy_final": float(proxy[-1]),
    "proxy_change_after_min_pct": float(proxy_change),
    "outcome": outcome(
      truth["golden_rise_pct"], proxy_change, threshold_pct, rise.rising, fell=best > 0
    ),
  }


def _trend_keys(rise: trend.Trend | None) -> dict[str, Any]:
  """The golden trend's summary keys (None numbers for a diverged run)."""
  if rise is None:
    return {
      "golden_trend_pct_per_doubling": None,
      "golden_trend_ci95": None,
      "golden_trend_points": 0,
      "golden_trend_rising": False,
    }
  return {
    "golden_trend_pct_per_doubling": rise.slope_pct_per_doubling,
    "golden_trend_ci95": None if rise.low is None else [rise.low, rise.high],
    "golden_trend_points": rise.points,
    "golden_trend_rising": rise.rising,
  }


def refreshed_at_step(rows: Sequence[Mapping[str, Any]]) -> int | None:
  """The step at which the run switched to fresh teacher samples (its first row with
  DETECTOR_REFRESHED = 1: `detection.on_detect = 'refresh'`), or None."""
  return next((int(r["step"]) for r in rows if r.get(DETECTOR_REFRESHED) == 1.0), None)


def summarize_run(
  rows: Sequence[Mapping[str, Any]],
  threshold_pct: float,
  settings: detection.DetectorSettings,
  metric: str,
  teacher_golden: float | None = None,
) -> dict[str, Any]:
  """Summary of one regime's metrics rows: design.md section 4 keys read on held-out prompts
  (headline view: golden `GOLDEN`, proxy `PROXY`), the `outcome` and `hacking` verdicts, every
  view of `SIGNATURE_VIEWS` the rows hold, training-prompt diagnostics, the final next-token
  entropies, and the detector's verdict on `metric` with its lag after the golden minimum.
  `teacher_golden` (the teacher's own golden distance, if known) is recorded beside the
  student's first golden value (`student_init_golden`), with whether the teacher was the better
  model at the student's start and at every evaluation."""
  steps = np.array([r["step"] for r in rows])
  golden, proxy, train_proxy = (column(rows, m) for m in (GOLDEN, PROXY, TRAIN_PROXY))
  headline = signature(steps, golden, proxy, threshold_pct)
  found = detection.detect(steps, column(rows, metric), settings)
  summary = {
    "golden_metric": GOLDEN,
    "proxy_metric": PROXY,
    "train_proxy_metric": TRAIN_PROXY,
    **headline,
    "hacking": headline["outcome"] == "teacher_hacking",
    **teacher_levels(teacher_golden, golden),
    **teacher_gap(steps, golden, proxy, teacher_golden),
    "views": _views(rows, steps, threshold_pct),
    "final_step": int(steps[-1]),
    "train_loss_final": rows[-1].get("train/loss"),
    "entropy_final": {
      model: rows[-1].get(entropy(EVAL_ORACLE, model)) for model in ("student", "teacher", "oracle")
    },
    "detector_metric": metric,
    **found.to_json(),
    "refreshed_at_step": refreshed_at_step(rows),
  }
  if headline["golden_min_step"] is not None:
    summary.update(_around_minimum(steps, golden, proxy, train_proxy, headline, found))
  return summary


def _views(
  rows: Sequence[Mapping[str, Any]], steps: np.ndarray, threshold_pct: float
) -> dict[str, dict[str, Any]]:
  """The verdict read with every view of `SIGNATURE_VIEWS` the rows hold."""
  return {
    view: {
      "golden_metric": golden_name,
      "proxy_metric": proxy_name,
      "sampled_by": sampled_by,
      **signature(steps, column(rows, golden_name), column(rows, proxy_name), threshold_pct),
    }
    for view, (golden_name, proxy_name, sampled_by) in SIGNATURE_VIEWS.items()
    if golden_name in rows[-1] and proxy_name in rows[-1]
  }


def _around_minimum(
  steps: np.ndarray,
  golden: np.ndarray,
  proxy: np.ndarray,
  train_proxy: np.ndarray,
  headline: Mapping[str, Any],
  found: detection.Detection,
) -> dict[str, Any]:
  """The training proxy at golden's minimum and at the end, golden against the proxies in
  log-log before and after the minimum, and the detector's lag after it."""
  best = int(np.flatnonzero(steps == headline["golden_min_step"])[0])
  # Golden against proxy in log-log (golden ~ A proxy^alpha), before and after the golden
  # minimum: alpha > 0 while they fall together; after the minimum of a teacher-hacking run
  # golden rises while the held-out proxy falls (alpha < 0).
  before, after = slice(0, best + 1), slice(best, None)
  out = {
    "train_proxy_at_golden_min": float(train_proxy[best]),
    "train_proxy_final": float(train_proxy[-1]),
    "golden_vs_proxy_before_min": _alpha(proxy[before], golden[before]),
    "golden_vs_proxy_after_min": _alpha(proxy[after], golden[after]),
    "golden_vs_train_proxy_after_min": _alpha(train_proxy[after], golden[after]),
  }
  if found.detected:
    fired = int(np.flatnonzero(steps == found.step)[0])
    out["detected_lag_steps"] = found.step - headline["golden_min_step"]
    out["detected_lag_evals"] = fired - best
  return out


def teacher_levels(teacher_golden: float | None, golden: np.ndarray) -> dict[str, Any]:
  """The teacher's golden distance beside the student's golden curve `golden` [T]:
  `teacher_golden`, `student_init_golden` (the first evaluation), `teacher_better_at_start`
  and `teacher_better_throughout` (below the student's golden at every finite evaluation; None
  where the teacher's level is unknown)."""
  finite = golden[np.isfinite(golden)]
  start = float(golden[0]) if len(golden) and np.isfinite(golden[0]) else None
  known = teacher_golden is not None
  return {
    "teacher_golden": teacher_golden,
    "student_init_golden": start,
    "teacher_better_at_start": (teacher_golden < start) if known and start is not None else None,
    "teacher_better_throughout": bool(np.all(teacher_golden < finite)) if known else None,
  }


def teacher_gap(
  steps: np.ndarray, golden: np.ndarray, proxy: np.ndarray, teacher_golden: float | None
) -> dict[str, Any]:
  """Where the student stands against its teacher on golden (docs/metrics.md), from the curves
  golden and proxy [T] over `steps` [T] (their finite evaluations):
  - `teacher_gap_at_golden_min`: teacher golden minus the student's golden minimum (positive =
    the student passed its teacher); `teacher_pass_step`: the first evaluation step at which the
    student's golden is below the teacher's (0 = already at its start; None = never);
  - `proxy_floor`, `proxy_floor_step`: the held-out proxy's minimum and its (first) step: where
    the student came closest to its teacher; `golden_at_proxy_floor` and
    `teacher_gap_at_proxy_floor` = teacher golden minus it (positive = at its closest to the
    teacher the student was better than the teacher);
  the gaps and the pass step are None where the teacher's level is unknown."""
  keys = ("teacher_gap_at_golden_min", "teacher_pass_step", "teacher_gap_at_proxy_floor")
  gap: dict[str, Any] = dict.fromkeys(keys)
  gap.update(proxy_floor=None, proxy_floor_step=None, golden_at_proxy_floor=None)
  both = np.flatnonzero(np.isfinite(golden) & np.isfinite(proxy))
  if len(both):
    floor = both[np.argmin(proxy[both])]
    gap.update(
      proxy_floor=float(proxy[floor]),
      proxy_floor_step=int(steps[floor]),
      golden_at_proxy_floor=float(golden[floor]),
    )
  finite = np.isfinite(golden)
  if teacher_golden is None or not finite.any():
    return gap
  passed = np.flatnonzero(finite & (golden < teacher_golden))
  gap.update(
    teacher_gap_at_golden_min=float(teacher_golden - golden[finite].min()),
    teacher_pass_step=int(steps[passed[0]]) if len(passed) else None,
  )
  if len(both):
    gap["teacher_gap_at_proxy_floor"] = float(teacher_golden - gap["golden_at_proxy_floor"])
  return gap


def _alpha(proxy: np.ndarray, golden: np.ndarray) -> dict[str, float | None]:
  """alpha of golden ~ A proxy^alpha with its standard error (None with too few points)."""
  fit = detection.fit_golden_vs_proxy(proxy, golden)
  if not fit.ok:
    return {"alpha": None, "alpha_stderr": None, "points": fit.num_points}
  return {"alpha": -fit.params["b"], "alpha_stderr": fit.stderr["b"], "points": fit.num_points}


# The numbers of a run summary averaged over an arm's seeds.
ARM_MEANS = (
  "teacher_golden",
  "student_init_golden",
  "golden_min",
  "golden_min_step",
  "golden_final",
  "golden_rise_pct",
  "golden_trend_pct_per_doubling",
  "teacher_gap_at_golden_min",
  "teacher_gap_at_proxy_floor",
  "proxy_final",
  "proxy_change_after_min_pct",
  "teacher_samples_generated",
  "student_samples_generated",
  "generation_flops",
)


def _mean(values: Sequence[float | None]) -> float | None:
  """Mean of the defined values; None if there are none."""
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def summarize_arm(seeds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """One arm of a study from its run summaries {seed: `summarize_run`}: the summaries, the mean
  of each ARM_MEANS number over the seeds that have it, the count of each outcome, and the
  counts of teacher-hacking runs and of runs the detector fired on."""
  runs = list(seeds.values())
  return {
    "seeds": dict(seeds),
    "mean": {k: _mean([s.get(k) for s in runs]) for k in ARM_MEANS},
    "outcomes": {o: sum(s["outcome"] == o for s in runs) for o in OUTCOMES},
    "hacking_runs": sum(s["hacking"] for s in runs),
    "detected_runs": sum(s["detected"] for s in runs),
  }


def detector_quality(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Confusion counts of the detector against the oracle over run summaries (positive: the
  `outcome` is in POSITIVE), and the lag (detected step - golden minimum step, in steps and
  evaluations) of its true positives. Runs the detector switched to fresh data
  (`refreshed_at_step`) are left out and counted (`refreshed_runs`): its firing changed what
  the oracle then saw."""
  refreshed = [s for s in runs if s.get("refreshed_at_step") is not None]
  runs = [s for s in runs if s.get("refreshed_at_step") is None]
  positive = [s["outcome"] in POSITIVE for s in runs]
  hits = [s for s, p in zip(runs, positive) if p and s["detected"]]
  return {
    "runs": len(runs),
    "true_positives": len(hits),
    "false_positives": sum(s["detected"] and not p for s, p in zip(runs, positive)),
    "false_negatives": sum(p and not s["detected"] for s, p in zip(runs, positive)),
    "true_negatives": sum(not p and not s["detected"] for s, p in zip(runs, positive)),
    "lag_steps": [s["detected_lag_steps"] for s in hits],
    "lag_evals": [s["detected_lag_evals"] for s in hits],
    "refreshed_runs": len(refreshed),
  }
