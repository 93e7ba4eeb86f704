"""The finished regime runs of study workdirs that the detector's evaluation scores
(`finished_runs`): each run's held-out curves and the oracle's verdict on it (`load_run`:
`summaries.signature`, golden rising by at least `threshold_pct` is positive,
`summaries.POSITIVE`), and whether its held-out proxy never rises (never more than NEVER_RISES
above its running minimum after the golden minimum: plain early stopping cannot see those).

A run is never scored from a broken directory: one whose `metrics.jsonl` lacks an evaluation row
of its schedule (its `config.json`), whose config cannot be read, whose golden values are all
null, that diverged or that refreshed its data (`detection.on_detect = 'refresh'`) is left out
and named, with the reason.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from th_distill import errors
from th_distill.config.run_config import RunConfig
from th_distill.observing.metric_names import GOLDEN, PROXY
from th_distill.observing.metrics_io import MetricsLost, column, read_metrics
from th_distill.results.summaries import refreshed_at_step, signature
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import RegimeDirectory, RunDirectory

NEVER_RISES = 0.01  # relative rise over the running minimum that counts as the proxy rising


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
