r"""Studies: many experiments (variants x seeds) run one after the other, and one report.

  python -m th_distill.study --config=configs/studies/diversity.py --workdir=/tmp/studies \
      [--config.seeds="(0,1)"] [--config.base.student.steps=1000]

A study config (`configs/studies/*.py`) has:
- `name`, `title`: the report's folder and title;
- `base`: a complete experiment config (`th_distill.config.base_config()` and changes);
- `variants`: name -> nested overrides of `base` (e.g. `{'offline': {'num_prompts': 64}}`);
- `seeds`: the seeds every variant runs with;
- `reference`: the arm the others are compared with, paired over seeds (`th_distill.results.paired`;
  default: the first arm); `references` (optional): {arm: its own reference arm}, for studies
  with several families of arms;
- `analysis` (optional): 'gap_map' adds the golden rise against the teacher-student gap to the
  report (`th_distill.results.gap_map`, `gap_map_report`), with `diversity` the variants read
  at equal gap and `length_unit` the steps its runs are read at as 1x (then 2x and 4x).

Layout: `WORKDIR/runs/<fingerprint>/seed<s>/` is an ordinary experiment workdir (its own
report, metrics and checkpoints), named by the hash of its config without `seed` and `regimes`;
`WORKDIR/stage1/seed<s>-<fingerprint>/` holds stage 1, shared by every run with the same seed and
stage-1 settings. Studies that share a WORKDIR share identical runs (the default regime study's
offline run is also the k = 1 arm of the generation-budget study). Runs are cached like
experiments: running the same command again skips finished regimes and resumes a stopped one from
its last checkpoint, so a study can be interrupted at any time; `--finished_only` writes the
report of the runs finished so far without running any. Runs go seed by seed, so a
cut-short study has whole seeds. The report (`WORKDIR/<name>/report.md`, `summary.json`,
`curves.png`, `proxy_golden.png`, `detector.png`) has one arm per variant and regime, with bands
over the seeds, and lists the run directory of every arm.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import flags, logging

from th_distill import cli, experiment
from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.observing import progress
from th_distill.planning import workload
from th_distill.results import gap_map, gap_map_report, study_report
from th_distill.rundir import lock as workdir_lock
from th_distill.rundir import records
from th_distill.rundir.layout import RunDirectory


def study_config(
  name: str,
  title: str,
  base: ml_collections.ConfigDict,
  variants: Mapping[str, Mapping[str, Any]],
  seeds: tuple[int, ...] = (0, 1, 2),
  reference: str = "",
  references: Mapping[str, str] | None = None,
  analysis: str = "",
  diversity: tuple[str, ...] = (),
  length_unit: int = gap_map.DEFAULT_STEPS,
) -> ml_collections.ConfigDict:
  """A study config (module docstring); what `get_config()` of a study file returns."""
  return ml_collections.ConfigDict(
    dict(
      name=name,
      title=title,
      base=base,
      variants=variants,
      seeds=seeds,
      reference=reference,
      references=dict(references or {}),
      analysis=analysis,
      diversity=diversity,
      length_unit=length_unit,
    )
  )


def _apply(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any], variant: str, prefix: str = ""
) -> None:
  for key, value in overrides.items():
    field = f"{prefix}{key}"
    if key not in config:
      raise config_lib.ConfigError(
        f"variants.{variant}.{field}: no such field in the experiment config"
        + config_lib.suggest(field, [f"{prefix}{k}" for k in config.keys()])
      )
    if isinstance(value, Mapping):
      _apply(config[key], value, variant, f"{field}.")
    else:
      config[key] = value


def run_configs(
  study: ml_collections.ConfigDict,
) -> list[tuple[str, int, ml_collections.ConfigDict]]:
  """(variant, seed, experiment config) of every run, seed by seed; every config validated."""
  if not study.seeds or not study.variants:
    raise config_lib.ConfigError("seeds and variants must each hold at least one entry")
  runs = []
  for seed in study.seeds:
    for variant, overrides in study.variants.items():
      config = study.base.copy_and_resolve_references()
      _apply(config, overrides.to_dict(), variant)
      config.seed = seed
      try:
        config_lib.validate(config)
      except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"variant {variant!r}, seed {seed}: {e}") from None
      runs.append((variant, seed, config))
  return runs


# Folders of a study workdir that are not a study's report (`name` may not be one of them).
_RUN_FOLDERS = ("runs", "stage1")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: object) -> None:
  """ConfigError unless the study's `name` is a plain folder name (its report goes to
  WORKDIR/<name>/): not a path, not hidden, not a folder of the runs."""
  if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in _RUN_FOLDERS:
    raise config_lib.ConfigError(
      f"name: {name!r} must be a plain folder name (letters, digits, '.', '-', '_'; not a path, "
      f"not {' or '.join(_RUN_FOLDERS)}): the report goes to WORKDIR/<name>/"
    )


def check_distinct_arms(runs: list[tuple[str, int, RunConfig]]) -> None:
  """ConfigError naming both variants if two arms of a study are the same run (the same
  fingerprint, seed and regime): the study would compare a run with itself."""
  seen: dict[tuple[str, int, str], str] = {}
  for variant, seed, config in runs:
    key = run_key(config)
    for regime in config.regimes:
      other = seen.setdefault((key, seed, regime), variant)
      if other != variant:
        raise config_lib.ConfigError(
          f"variants {other!r} and {variant!r} are the same run (regime {regime!r}, seed {seed}, "
          f"fingerprint {key}); change one of them or remove it"
        )


def run_dir(workdir: str, config: RunConfig) -> str:
  """The experiment workdir of `config` (shared by configs that differ only in fields no result
  depends on: `records.FREE_FIELDS`, such as `regimes` or `mesh`)."""
  return os.path.join(workdir, "runs", run_key(config), f"seed{config.seed}")


def run_key(config: RunConfig) -> str:
  """The fingerprint of a run's config without `seed` (and `records.FREE_FIELDS`)."""
  return records.fingerprint(
    config, tuple(k for k in records.regime_sections(config) if k != "seed")
  )


def stage1_dir(workdir: str, config: RunConfig) -> str:
  """The stage-1 directory shared by the runs with this config's seed and stage-1 settings."""
  key = records.fingerprint(config, records.stage1_sections(config))
  return os.path.join(workdir, "stage1", f"seed{config.seed}-{key}")


def arm_label(variant: str, regime: str, variants: int, regimes: set[str]) -> str:
  """Arms are named by what varies: the regime, the variant, or both."""
  if variants == 1:
    return regime
  if len(regimes) == 1:
    return variant
  return f"{variant} / {regime}"


def run(
  study: ml_collections.ConfigDict, workdir: str, finished_only: bool = False
) -> dict[str, Any]:
  """Runs (or resumes) every run of the study, then writes its report; returns the summary.
  `finished_only`: run nothing, and report the runs that are finished (a study cut short;
  the table gives each arm's seeds). Logs its progress as `experiment.run` does (absl INFO,
  shown unless the caller chose an absl verbosity)."""
  check_name(study.name)
  runs = run_configs(study)
  check_distinct_arms([(v, s, RunConfig.from_config(c)) for v, s, c in runs])
  with workdir_lock.hold(workdir), progress.shown():
    return _run(study, runs, workdir, finished_only)


def _run(
  study: ml_collections.ConfigDict,
  runs: list[tuple[str, int, ml_collections.ConfigDict]],
  workdir: str,
  finished_only: bool,
) -> dict[str, Any]:
  """`run`, with the study workdir locked (its runs lock their own workdirs)."""
  regimes = {r for _, _, config in runs for r in config.regimes}
  label = {
    (variant, regime): arm_label(variant, regime, len(study.variants), regimes)
    for variant, _, config in runs
    for regime in config.regimes
  }
  arms: dict[str, list[tuple[int, str]]] = {name: [] for name in label.values()}
  typed = [RunConfig.from_config(config) for _, _, config in runs]
  _check_references(study, arms)
  start, teacher_golden, costs, mapped = time.time(), {}, {}, []
  for index, ((variant, seed, config), run_config) in enumerate(zip(runs, typed)):
    logging.info(
      "Study run %d/%d: variant %r, seed %d (%.0fs elapsed)",
      index + 1,
      len(runs),
      variant,
      seed,
      time.time() - start,
    )
    directory = RunDirectory(run_dir(workdir, run_config), stage1_dir(workdir, run_config))
    if finished_only and not all(directory.regime(r).finished for r in config.regimes):
      logging.info("Not finished, left out: variant %r, seed %d", variant, seed)
      continue
    done = experiment.run(config, directory.path, directory.stage1_path)
    for regime in config.regimes:
      directory.regime(regime).check_rows(run_config.eval_settings.steps)
      path = directory.regime(regime).metrics
      arms[label[variant, regime]].append((seed, path))
      mapped.append(
        dict(setting=variant, regime=regime, seed=seed, path=path, steps=config.student.steps)
      )
      teacher_golden[path] = done.get("teacher_golden")  # {} off process 0
      regime_summary = done.get("regimes", {}).get(regime, {})
      costs[path] = {k: regime_summary[k] for k in workload.COST_KEYS if k in regime_summary}
  summary = _write_reports(study, workdir, arms, mapped, teacher_golden, costs)
  logging.info(
    "Study done in %.0fs; report in %s",
    time.time() - start,
    RunDirectory(os.path.join(workdir, study.name)).report,
  )
  return summary


def _check_references(study: ml_collections.ConfigDict, arms: Mapping[str, Any]) -> None:
  """ConfigError naming the field if `reference` or `references` names an arm the study lacks."""
  named = [("reference", study.reference)] if study.get("reference", "") else []
  for arm, base in dict(study.get("references", {})).items():
    named += [(f"references[{arm!r}]", arm), (f"references[{arm!r}]", base)]
  for field, arm in named:
    if arm not in arms:
      raise config_lib.ConfigError(
        f"{field}: {arm!r} is not an arm of the study; its arms "
        f"are {sorted(arms)}" + config_lib.suggest(arm, list(arms))
      )


def _write_reports(
  study: ml_collections.ConfigDict,
  workdir: str,
  arms: dict[str, list[tuple[int, str]]],
  mapped: list[dict[str, Any]],
  teacher_golden: dict[str, float],
  costs: dict[str, dict[str, float]],
) -> dict[str, Any]:
  """The study's report (`results.study_report`) and, for `analysis = 'gap_map'`, its gap map
  (`results.gap_map_report`), into WORKDIR/<name>; returns the summary."""
  directory = os.path.join(workdir, study.name)
  base = RunConfig.from_config(study.base)
  summary = study_report.write_study_report(
    directory,
    study.title,
    arms,
    base,
    study.get("reference", ""),
    teacher_golden,
    costs,
    dict(study.get("references", {})),
  )
  if study.get("analysis", "") == "gap_map":
    summary["gap_map"] = gap_map_report.write_gap_map(
      directory,
      mapped,
      teacher_golden,
      base.hacking_threshold_pct,
      base.detection.detector,
      base.detection.metric,
      tuple(study.get("diversity", ())),
      study.get("length_unit", gap_map.DEFAULT_STEPS),
    )
  return summary


def main() -> None:
  """The command line (flags are defined here, not at import: the module is a library too)."""
  study = cli.config_flag("Study config file (configs/studies/*.py).")
  workdir = flags.DEFINE_string(
    "workdir",
    None,
    "Directory for the runs (shared by studies) and the study's report (WORKDIR/<name>/).",
  )
  finished_only = flags.DEFINE_bool(
    "finished_only",
    False,
    "Run nothing: write the report from the runs already finished (a study cut short).",
  )
  flags.mark_flags_as_required(["config", "workdir"])

  def body(argv):
    cli.reject_arguments(argv)
    cli.run_command(lambda: run(study.value, workdir.value, finished_only.value))

  cli.main(body, config_kind="study")


if __name__ == "__main__":
  main()
