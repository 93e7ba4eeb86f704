r"""The hacking detector and its baselines, calibrated on some seeds and scored on others.

  python -m th_distill.detector_eval --workdir=/tmp/studies [--workdir=/tmp/studies_test] \
      --calibration_seeds=0,1,2,3,4 --test_seeds=5,6,7,8,9 [--threshold_pct=5] [--out=FILE]

Reads every finished regime run of the study workdirs (`WORKDIR/runs/*/seed<s>/<regime>/`)
with the oracle's held-out verdict on each (`th_distill.results.detector_runs`; a run whose
directory is broken is left out and named, with the reason: `not_scored`), then for each method
(the detector and the rules it must beat: `th_distill.results.detector_scores.METHODS`) chooses
its settings on the calibration seeds only and scores them on the test seeds
(`th_distill.results.detector_scores.calibrate_and_test`). Every method leaves the evaluations
before `--min_step` unscored (the transient; default the detector's). Prints markdown tables
(`th_distill.results.detector_tables`); `--out` writes every number as JSON (docs/data/).
"""

from __future__ import annotations

from absl import flags

from th_distill import cli, detection, errors
from th_distill.results.detector_runs import finished_runs
from th_distill.results.detector_scores import METHODS, calibrate_and_test, with_min_step
from th_distill.results.detector_tables import table
from th_distill.rundir import checkpoints


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
