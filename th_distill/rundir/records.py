"""What a stage's results depend on, and whether a run may reuse them.

Each stage depends on named config sections only (`stage1_sections`, `offline_sections`,
`regime_sections`; dotted paths) and records their values in its marker with their hash
(`StageKey`): a rerun reuses a finished stage whose sections are unchanged and refuses one
whose sections changed (`ConfigChanged`, listing each changed field with its old and new value
and the two ways forward: a new `--workdir`, or the old values as command-line overrides).
Fields that change no result (`FREE_FIELDS`) are in no stage's sections: `regimes` (the arms to
run), `on_nonfinite` (a run stopped by a non-finite step may go on skipping them), `mesh`
(results depend on it only through float reduction order: finished stages are reused under any
mesh, and unfinished ones resume on the devices they started on, `rundir.devices`) and
`hacking_threshold_pct` and `write_figures` (read by the report only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from th_distill.errors import RunError
from th_distill.rundir import checkpoints

if TYPE_CHECKING:
  from th_distill.config.run_config import RunConfig

# Fields a workdir's results do not depend on.
FREE_FIELDS = ("regimes", "on_nonfinite", "mesh", "hacking_threshold_pct", "write_figures")
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


def as_recorded(tree: Mapping[str, Any]) -> dict[str, Any]:
  """`tree` as it reads back from JSON (tuples as lists), for comparison with a record."""
  return json.loads(json.dumps(checkpoints.json_safe(dict(tree)), default=list))


def changes(
  old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
  """(dotted field, old value, new value) of every field that differs between two nested
  records (`as_recorded`), fields in FREE_FIELDS left out; a missing field reads '(absent)'.
  A field missing from `old` but in `defaults` (a nested record too) reads as its default: a
  field added to th_distill after `old` was written, whose default keeps what runs did before."""
  old_flat, new_flat = _flatten(old), _flatten(new)
  old_flat = {**_flatten(defaults or {}), **old_flat}
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


# Stage 1's sections: the oracle, its data, the teacher's SFT, the student's initialisation and
# the shared sampling settings (the eval sets are sampled in stage 1).
STAGE1_SECTIONS = (
  "seed",
  "task",
  "prompts",
  "oracle",
  "teacher",
  "student.model",
  "student.checkpoint",
  "student.init",
  "student.sft_steps",
  "sampling",
)
# The student's SFT optimiser fields, when stage 1 trains the student (`student.init = 'sft'`).
STUDENT_SFT_SECTIONS = (
  "student.learning_rate",
  "student.warmup_steps",
  "student.schedule",
  "student.batch_size",
)


def stage1_sections(config: RunConfig) -> tuple[str, ...]:
  """The config sections stage 1's results depend on."""
  if config.student.init == "sft":
    return STAGE1_SECTIONS + STUDENT_SFT_SECTIONS
  return STAGE1_SECTIONS


def offline_sections(config: RunConfig) -> tuple[str, ...]:
  """The sections of the offline dataset: stage 1's (its teacher), `offline` (N and k) and
  `frozen_dtype` (it is sampled from the teacher in stage 2's dtype, as the online arms are),
  and the truncation's K and temperature when it stores a truncated teacher."""
  top = ("loss.teacher_top_k", "loss.temperature") if config.loss.teacher_top_k else ()
  return stage1_sections(config) + ("offline", "frozen_dtype", *top)


def regime_sections(config: RunConfig) -> tuple[str, ...]:
  """The sections of a distillation run: every top-level section but `FREE_FIELDS`."""
  return tuple(k for k in config.values if k not in FREE_FIELDS)


def fingerprint(config: RunConfig, sections: tuple[str, ...]) -> str:
  """Hash (16 hex digits) of the named config sections."""
  text = json.dumps(config.record(sections), sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class StageKey:
  """A stage's dependence on the config: its sections' values and their hash."""

  fingerprint: str
  fields: dict[str, Any]

  @classmethod
  def of(cls, config: RunConfig, sections: tuple[str, ...]) -> StageKey:
    return cls(fingerprint(config, sections), config.record(sections))

  def record(self) -> dict[str, Any]:
    """The marker's part that `check` reads back."""
    return {"fingerprint": self.fingerprint, "fields": self.fields}

  def check(self, marker: str) -> None:
    """Raises ConfigChanged if `marker` was written for other section values."""
    check_marker(marker, self.fingerprint, self.fields)

  def as_arrays(self) -> dict[str, np.ndarray]:
    """The record as arrays, to store beside a stage's arrays (`check_arrays` reads it)."""
    return {
      "fingerprint": np.asarray(self.fingerprint),
      "fields": np.asarray(json.dumps(self.fields, default=list)),
    }

  def check_arrays(self, arrays: dict[str, np.ndarray], path: str) -> None:
    """`check` for a stage stored as arrays in `path` (e.g. the offline dataset)."""
    record: dict[str, Any] = {"fingerprint": str(arrays["fingerprint"])}
    if "fields" in arrays:
      record["fields"] = json.loads(str(arrays["fields"]))
    check_record(record, self.fingerprint, self.fields, path)
