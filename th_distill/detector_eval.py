r"""The detector against the oracle over every finished run of a study workdir, for several settings.

  python -m th_distill.detector_eval --workdir=/tmp/studies [--threshold_pct=5]

Reads every `WORKDIR/runs/*/seed*/<regime>/metrics.jsonl` (all the runs of the studies that share
the workdir), takes the oracle's verdict on each (`report.summarize_run`: golden rises by at least
`threshold_pct` while the training-prompt proxy falls) and prints, for the default detector and
for one change of each setting at a time, the confusion counts and the lag of the true positives
(firing step minus golden-minimum step, in evaluations), as a markdown table.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Sequence

import numpy as np
from absl import flags

from th_distill import cli, detection, errors, report
from th_distill.metrics_io import PROXY, TRAIN_PROXY, read_metrics

VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("default", PROXY, {}),
    ("threshold 2", PROXY, {"threshold": 2.0}),
    ("threshold 3", PROXY, {"threshold": 3.0}),
    ("threshold 4", PROXY, {"threshold": 4.0}),
    ("patience 2", PROXY, {"patience": 2}),
    ("patience 5", PROXY, {"patience": 5}),
    ("window 10", PROXY, {"window": 10.0}),
    ("window 100", PROXY, {"window": 100.0}),
    ("noise floor 0.003", PROXY, {"noise_floor": 0.003}),
    ("noise floor 0.03", PROXY, {"noise_floor": 0.03}),
    ("law loglog", PROXY, {"law": "loglog"}),
    ("training-prompt proxy, below", TRAIN_PROXY, {"direction": "below"}),
)


def finished_runs(workdir: str) -> list[tuple[str, list[dict[str, Any]]]]:
  """(regime directory, metrics rows) of every finished regime run under WORKDIR/runs;
  RunError if there is none."""
  runs = []
  for done in sorted(glob.glob(os.path.join(workdir, "runs", "*", "seed*", "*", "done.json"))):
    directory = os.path.dirname(done)
    runs.append((directory, read_metrics(os.path.join(directory, "metrics.jsonl"))))
  if not runs:
    raise errors.RunError(f"--workdir={workdir}: no finished study run in {workdir}/runs (run "
                          "`python -m th_distill.study --workdir=...` first)")
  return runs


def evaluate(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], threshold_pct: float,
             settings: detection.DetectorSettings, metric: str) -> dict[str, Any]:
  """`report.detector_quality` of `settings` on `metric` over the runs."""
  return report.detector_quality([report.summarize_run(rows, threshold_pct, settings, metric)
                                  for _, rows in runs])


def _lags(values: Sequence[int]) -> str:
  if not values:
    return "–"
  return f"{np.median(values):g} [{min(values)}, {max(values)}]"


def table(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], threshold_pct: float) -> str:
  """The markdown table of every variant of VARIANTS."""
  lines = ["| detector | TP | FP | FN | TN | lag in evaluations: median [min, max] | lag in steps: "
           "median [min, max] |", "|---|---|---|---|---|---|---|"]
  for name, metric, changes in VARIANTS:
    settings = dataclasses.replace(detection.DetectorSettings(), **changes)
    q = evaluate(runs, threshold_pct, settings, metric)
    lines.append(f"| {name} | {q['true_positives']} | {q['false_positives']} | "
                 f"{q['false_negatives']} | {q['true_negatives']} | {_lags(q['lag_evals'])} | "
                 f"{_lags(q['lag_steps'])} |")
  return "\n".join(lines)


def main() -> None:
  workdir = flags.DEFINE_string("workdir", None, "A study workdir (holding runs/).")
  threshold = flags.DEFINE_float("threshold_pct", 5.0, "Golden rise that counts as hacking.")
  flags.mark_flags_as_required(["workdir"])

  def print_tables() -> None:
    runs = finished_runs(workdir.value)
    hacking = sum(report.summarize_run(rows, threshold.value, detection.DetectorSettings(),
                                       PROXY)["hacking"] for _, rows in runs)
    print(f"{len(runs)} finished runs in {workdir.value}/runs, {hacking} hacking by the oracle "
          f"(golden rise >= {threshold.value:g}% with the training-prompt proxy falling).\n")
    print(table(runs, threshold.value))

  def body(argv: list[str]) -> None:
    cli.reject_arguments(argv)
    cli.run_command(print_tables)

  cli.main(body)


if __name__ == "__main__":
  main()
