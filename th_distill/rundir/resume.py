"""Resuming a workdir under the configuration it was started with, and nothing else.

A workdir's stages (stage 1, the offline dataset, each regime's checkpoints and metrics) depend
on every config field but FREE_FIELDS: `regimes` (the list of arms to run), `on_nonfinite` (what
to do with a non-finite step: a run stopped by one may go on skipping them), `mesh` (results do
not depend on it beyond float tolerance, and checkpoints restore onto another mesh) and
`hacking_threshold_pct` (read by the report only). Each stage depends on fewer
(`th_distill.rundir.records`). `check_workdir` compares the
config a run is given with the one recorded in `WORKDIR/config.json` before that file is
rewritten; `check_marker` compares it with the fields recorded in a stage's marker. Both refuse a
change with `ConfigChanged`, which lists each changed field with its old and new value and the two
ways forward: a new `--workdir`, or the old values (as command-line overrides).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from th_distill.data.regimes import REGIMES
from th_distill.errors import RunError
from th_distill.rundir import checkpoints

# Fields a workdir's results do not depend on.
FREE_FIELDS = ("regimes", "on_nonfinite", "mesh", "hacking_threshold_pct")
_ABSENT = "(absent)"


class ConfigChanged(RunError, ValueError):
  """A workdir (or a stage of it) was started with other config values than this run's."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def as_recorded(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """`config` as it reads back from JSON (tuples as lists), for comparison with a record."""
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.loads(json.dumps(checkpoints.json_safe(tree)))


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(dotted field, old value, new value) of every field that differs between two nested
  records (`as_recorded`), fields in FREE_FIELDS left out; a missing field reads '(absent)'."""
  old_flat, new_flat = _flatten(old), _flatten(new)
  return [
    (field, old_flat.get(field, _ABSENT), new_flat.get(field, _ABSENT))
    for field in sorted(old_flat.keys() | new_flat.keys())
    if field.split(".")[0] not in FREE_FIELDS
    and old_flat.get(field, _ABSENT) != new_flat.get(field, _ABSENT)
  ]


def _override(field: str, value: Any) -> str:
  text = value if isinstance(value, str) else json.dumps(value)
  return f"--config.{field}={text}" if " " not in text else f"--config.{field}='{text}'"


def refusal(what: str, diff: list[tuple[str, Any, Any]]) -> ConfigChanged:
  """The ConfigChanged error for `what` (e.g. '--workdir=/tmp/th') and its changed fields."""
  listed = "; ".join(f"{field}: {old!r} -> {new!r}" for field, old, new in diff)
  restore = " ".join(_override(field, old) for field, old, _ in diff if old != _ABSENT)
  return ConfigChanged(
    f"{what} was started with a different configuration ({listed}); use a new "
    "--workdir for the new values" + (f", or rerun with the old ones: {restore}" if restore else "")
  )


def _started(workdir: str, stage1_dir: str) -> bool:
  """Whether `workdir` holds any result: stage 1, the offline dataset or a regime's folder."""
  return (
    os.path.exists(os.path.join(stage1_dir, "info.json"))
    or os.path.exists(os.path.join(workdir, "offline_dataset.npz"))
    or any(os.path.isdir(os.path.join(workdir, regime)) for regime in REGIMES)
  )


def check_workdir(config: ml_collections.ConfigDict, workdir: str, stage1_dir: str) -> None:
  """Raises ConfigChanged if `workdir` holds results of a config (its `config.json`) that
  differs from `config` in a field other than FREE_FIELDS. Call before rewriting config.json."""
  path = os.path.join(workdir, "config.json")
  if not (os.path.exists(path) and _started(workdir, stage1_dir)):
    return
  diff = changes(checkpoints.read_json(path), as_recorded(config))
  if diff:
    raise refusal(f"--workdir={workdir}", diff)


def check_marker(marker: str, expected: str, fields: Mapping[str, Any]) -> None:
  """Raises ConfigChanged if the stage marker `marker` (JSON with `fingerprint`, and `fields`
  since this check exists) was written by another configuration than the one of fingerprint
  `expected` and recorded `fields` (`check_record`)."""
  check_record(checkpoints.read_json(marker), expected, fields, os.path.dirname(marker))


def check_record(
  record: Mapping[str, Any], expected: str, fields: Mapping[str, Any], where: str
) -> None:
  """Raises ConfigChanged if a stage's `record` ({fingerprint, fields}) of `where` (a path, for
  the message) was written by another configuration than this run's.

  A record whose fingerprint differs but whose recorded fields all equal this run's (a stage
  written when it depended on other sections, e.g. on the mesh) is accepted; fields it did not
  record cannot be compared and are left to `check_workdir`, which compares the whole config."""
  if record["fingerprint"] == expected:
    return
  if "fields" in record:
    diff = [
      change for change in changes(record["fields"], as_recorded(fields)) if change[1] != _ABSENT
    ]
    if diff:
      raise refusal(where, diff)
    return
  raise ConfigChanged(
    f"{where} was written by a different configuration (fingerprint "
    f"{record['fingerprint']}, this run {expected}); use a new --workdir, or "
    "rerun with the values it was written with (its config.json)"
  )
