"""The markdown tables of the detector's evaluation (`calibrate_and_test`'s result): detection
quality per method, then the golden cost of the checkpoint each method keeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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
