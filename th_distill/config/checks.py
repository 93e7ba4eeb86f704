"""Checking the experiment configuration at the boundary, before any compute.

`validate(config)` returns the typed config (`RunConfig`) or raises one `ConfigError` that lists
every problem, each with its field and what is allowed (config files: `th_distill.config.files`).
It runs both halves of the check:
- `check_fields(config)`: the values alone, without devices or files: unknown and non-finite
  fields, the models' and the detector's own checks, then every section's `problems()` and the
  checks that span sections (`RunConfig.problems`).
- `check_environment(config)`: what needs this machine or files: the mesh on the local devices,
  the seqio extra, the task's vocabulary file and data directory, the prompt file (its records and
  enough distinct prompts for the pools), and each checkpoint's fit to its model.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

from th_distill.config.defaults import base_config, model_config
from th_distill.config.run_config import MODELS, RunConfig, model_of
from th_distill.config.settings import Problem
from th_distill.data import prompt_files, tasks, vocabularies
from th_distill.detection import config as detector_config
from th_distill.errors import UsageError
from th_distill.models import fields_of, pretrained
from th_distill.models.families import CHECKPOINT_FAMILY
from th_distill.models.tokens import SpecialTokens
from th_distill.partitioning import resolve_mesh_shape


class ConfigError(UsageError, ValueError):
  """An invalid configuration value; the message names each offending field."""


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field of `config` as a dotted path ('student.learning_rate', ...)."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += dotted_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def suggest(name: str, candidates: list[str]) -> str:
  """'; did you mean X?' for the candidate nearest to `name` (difflib), or ''."""
  close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
  return f"; did you mean {close[0]}?" if close else ""


# The fields of a study config (`th_distill.study.study_config`; `reference` is optional).
STUDY_FIELDS = ("name", "title", "base", "variants", "seeds")
_MODEL_KEYS = ("oracle.model.", "teacher.model.", "student.model.")  # checked by their config


def config_kind(config: ml_collections.ConfigDict) -> str:
  """'study' for a study config (it has `base` and `variants`), else 'experiment'."""
  return "study" if "base" in config and "variants" in config else "experiment"


def missing_fields(config: ml_collections.ConfigDict, kind: str = "experiment") -> list[str]:
  """The dotted fields a config of `kind` lacks: those of `base_config()` for an experiment
  (a model's own fields left to its checks), `STUDY_FIELDS` and its base's for a study."""
  if kind == "study":
    missing = [f for f in STUDY_FIELDS if f not in config]
    base = config.get("base")
    if isinstance(base, ml_collections.ConfigDict):
      missing += [f"base.{f}" for f in missing_fields(base)]
    return missing
  present, missing = set(dotted_keys(config)), []
  for key in dotted_keys(base_config()):
    section = key.split(".")[0]
    name = key if section in config else section  # a whole section missing is named once
    if key not in present and not key.startswith(_MODEL_KEYS) and name not in missing:
      missing.append(name)
  return missing


def _non_finite_fields(c: ml_collections.ConfigDict) -> list[str]:
  """The dotted names of the float fields of `c` that hold NaN or an infinity."""
  fields = []
  for key in dotted_keys(c):
    value = c
    for part in key.split("."):
      value = value[part]
    if isinstance(value, float) and not math.isfinite(value):
      fields.append(key)
  return fields


class _Problems:
  """The problems found in a config, as 'field: message' lines in `errors`. `check` and `add`
  report a field once (its first problem); lines appended to `errors` directly may share a field
  (a checkpoint's several mismatches)."""

  def __init__(self):
    self.errors: list[str] = []
    self._reported: set[str] = set()

  def check(self, ok: bool, field: str, message: str) -> None:
    if not ok and field not in self._reported:
      self._reported.add(field)
      self.errors.append(f"{field}: {message}")

  def add(self, problems: list[Problem]) -> None:
    for field, message in problems:
      self.check(False, field, message)

  def raise_any(self) -> None:
    errors = self.errors
    if errors:
      raise ConfigError(
        "Invalid configuration:" + "".join(f"\n  {e}" for e in errors)
        if len(errors) > 1
        else f"Invalid configuration: {errors[0]}"
      )


def _buildable(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with each model sub-config and detector setting that cannot be built (their own types
  check them; the problems are reported) replaced by a valid one, so every other section's
  problems are found too."""
  c = c.copy_and_resolve_references()
  for name in MODELS:
    try:
      model_of(c[name].model)
    except (TypeError, ValueError):
      c[name].model = model_config("tiny", vocab_size=max(c.task.vocab_size, 1))
  try:
    detector_config.detector_settings(c.detection)
  except ValueError:
    defaults = base_config().detection
    c.detection.update({k: defaults[k] for k in detector_config.SETTINGS_FIELDS if k in defaults})
  return c


def _check_fields(c: ml_collections.ConfigDict, problems: _Problems) -> RunConfig:
  """The dict-level checks (unknown and non-finite fields, the models' and the detector's own
  checks), then every section's: returns the typed config (of placeholders where a model or
  the detector could not be built, so only use it if no problem was found)."""
  errors, check = problems.errors, problems.check
  missing = missing_fields(c)
  if missing:  # nothing else can be read: refused alone
    raise ConfigError(
      f"Invalid configuration: missing field(s) {', '.join(missing)} (start from "
      "th_distill.config.base_config())"
    )
  known = dotted_keys(base_config()) + [f"detection.{k}" for k in detector_config.SETTINGS_FIELDS]
  for key in dotted_keys(c):
    if key not in known and not key.startswith(_MODEL_KEYS):
      check(False, key, "no such field" + suggest(key, known))
  for key in _non_finite_fields(c):
    check(False, key, "must be a finite number")
  for name in MODELS:
    try:
      model_of(c[name].model)
    except (TypeError, ValueError) as e:
      errors.append(f"{name}.model: {e}")
  errors.extend(detector_config.problems(c.detection))
  typed = RunConfig.from_config(_buildable(c))
  problems.add(typed.problems())
  return typed


def _prompt_file_problems(c: ml_collections.ConfigDict) -> list[str]:
  """The prompt file's problems ('task.FIELD: ...'): unreadable, a line without the field, a
  template longer than the prompts, or fewer distinct prompts than the pools need."""
  sizes = {"oracle": c.prompts.num_oracle, "distill": c.prompts.num_distill}
  sizes["eval"] = c.prompts.num_eval
  try:
    problem = prompt_files.shortage(c.task, sizes)
  except (OSError, ValueError) as e:
    return [str(e)]
  return [f"task.prompt_file: {problem}"] if problem else []


def _warn_other_special_tokens(c: ml_collections.ConfigDict, tokens: SpecialTokens) -> None:
  """Logs a warning for each checkpoint whose own files name other special tokens than the
  task's vocabulary (every model of the run samples and pads with the task's)."""
  for name in MODELS:
    path = c[name].checkpoint if name != "oracle" or c.oracle.source == "checkpoint" else ""
    try:
      own = pretrained.special_tokens(path) if path else tokens
    except (OSError, ValueError):  # an unreadable checkpoint is its own problem
      continue
    if own != tokens:
      logging.warning(
        "%s.checkpoint's files name the special tokens %s, the task's vocabulary (%s) %s: every "
        "model samples, stops and pads with the task's.",
        name,
        own,
        c.task.vocabulary or c.task.source,
        tokens,
      )


def _check_environment(
  c: ml_collections.ConfigDict, problems: _Problems, devices: int | None = None
) -> None:
  if c.task.source == "seqio":
    problems.check(
      importlib.util.find_spec("seqio") is not None,
      "task.source",
      "'seqio' needs the seqio extra: pip install -e '.[seqio]'",
    )
    problems.errors.extend(tasks.data_errors(c.task.name, c.task.data_dir))
  _check_vocabulary(c, problems)
  _check_checkpoints(c, problems)
  _check_mesh(c, problems, devices)


def _check_vocabulary(c: ml_collections.ConfigDict, problems: _Problems) -> None:
  """The task's vocabulary can be read, fits the embedding with its special tokens, and the
  prompt file (if any) can be read with it."""
  try:
    vocabulary = vocabularies.task_vocabulary(c.task)
  except (OSError, ValueError, ImportError) as e:
    problems.errors.append(f"task.vocabulary: {e}")
    return
  problems.check(  # each model's vocab_size must equal task.vocab_size (check_fields)
    vocabulary.fits(c.task.vocab_size),
    "task.vocab_size",
    f"{c.task.vocab_size} embedding rows (every model's vocab_size) cannot hold the "
    f"{vocabulary.vocab_size} ids of {c.task.vocabulary}",
  )
  problems.errors.extend(
    f"task.vocabulary: {p}" for p in vocabulary.special_tokens.problems(c.task.vocab_size)
  )
  if c.task.source == "prompt_file" and c.task.prompt_file:
    problems.errors.extend(_prompt_file_problems(c))
  _warn_other_special_tokens(c, vocabulary.special_tokens)


def _check_checkpoints(c: ml_collections.ConfigDict, problems: _Problems) -> None:
  """Every checkpoint a model starts from can be read and matches its model sub-config."""
  for name in ("oracle", "teacher", "student"):
    path = c[name].checkpoint if name != "oracle" or c.oracle.source == "checkpoint" else ""
    if not path:
      continue
    try:
      model = model_of(c[name].model)
    except (TypeError, ValueError):  # check_fields names the invalid model sub-config
      continue
    try:
      problems.errors.extend(f"{name}.{problem}" for problem in pretrained.mismatches(path, model))
    except (OSError, ValueError) as e:
      problems.errors.append(f"{name}.checkpoint: {e}")


def _check_mesh(c: ml_collections.ConfigDict, problems: _Problems, devices: int | None) -> None:
  """The mesh fits the devices, and its data-parallel size divides the batches."""
  try:
    mesh = resolve_mesh_shape(
      c.mesh.data, c.mesh.fsdp, c.mesh.model, jax.device_count() if devices is None else devices
    )
  except ValueError as e:
    problems.errors.append(f"mesh: {e}")
    return
  data_parallel = mesh[0] * mesh[1]
  problems.check(
    c.prompts.num_eval >= data_parallel,
    "prompts.num_eval",
    f"{c.prompts.num_eval} must be at least the {data_parallel} data-parallel devices (the "
    "synthetic oracle is calibrated on held-out prompts, split over them)",
  )
  for field, parts in (("teacher", 1), ("student", max(c.student.micro_batches, 1))):
    problems.check(
      c[field].batch_size % (data_parallel * parts) == 0,
      f"{field}.batch_size",
      f"{c[field].batch_size} must be a multiple of the {data_parallel} data-parallel "
      f"devices (mesh.data x mesh.fsdp = {mesh[0]} x {mesh[1]})"
      + (f" times student.micro_batches = {parts}" if parts > 1 else ""),
    )


def _as_config_dict(c: ml_collections.ConfigDict | Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`c` itself if a ConfigDict, a ConfigDict of `c` if a mapping (nested plain dicts, as
  `base_config().to_dict()` gives); anything else is a ConfigError saying what is accepted."""
  if isinstance(c, ml_collections.ConfigDict):
    return c
  if isinstance(c, Mapping):
    return ml_collections.ConfigDict(dict(c))
  raise ConfigError(
    f"config: expected an ml_collections.ConfigDict or a (nested) dict of its fields, got "
    f"{type(c).__name__} (start from th_distill.config.base_config())"
  )


def check_fields(c: ml_collections.ConfigDict | Mapping[str, Any]) -> RunConfig:
  """The typed config of `c` (a ConfigDict or a nested dict of its fields); raises ConfigError
  listing every invalid value of `c`, judged from the values alone (no device, file or
  checkpoint is read): one message per field, the first problem found."""
  c = _as_config_dict(c)
  problems = _Problems()
  typed = _check_fields(c, problems)
  problems.raise_any()
  return typed


def check_environment(
  c: ml_collections.ConfigDict | Mapping[str, Any], devices: int | None = None
) -> None:
  """Raises ConfigError listing what keeps `c` from running here: its mesh on `devices` (default:
  jax.device_count()) and the batches and evaluation prompts split over it, the seqio extra, the
  task's vocabulary file and data directory, and each checkpoint's fit to its model."""
  c = _as_config_dict(c)
  problems = _Problems()
  _check_environment(c, problems, devices)
  problems.raise_any()


def resolve_checkpoint_models(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c`, or a copy whose model sub-configs of family 'checkpoint' hold the architecture their
  `<model>.checkpoint` defines (`pretrained.read_config`: its config.json), the sub-config's
  other fields (dtype, param_dtype, remat, scan_layers, ...) set over it; raises ConfigError
  naming the field of an empty path, an unreadable checkpoint or an unknown field."""
  names = [n for n in MODELS if c[n].model.get("family") == CHECKPOINT_FAMILY]
  if not names:
    return c
  c, problems = ml_collections.ConfigDict(c.to_dict()), _Problems()
  for name in names:
    path, overrides = c[name].checkpoint, dict(c[name].model)
    overrides.pop("family")
    if not path:
      problems.check(
        False,
        f"{name}.checkpoint",
        f"is empty, but {name}.model.family = 'checkpoint' reads the architecture from it: "
        "give a local checkpoint directory",
      )
      continue
    try:
      model = dataclasses.replace(pretrained.read_config(path), **overrides)
    except (OSError, ValueError) as e:
      problems.check(False, f"{name}.checkpoint", str(e))
      continue
    except TypeError as e:
      problems.check(False, f"{name}.model", f"{e} (a field its checkpoint's family lacks)")
      continue
    c[name].model = ml_collections.ConfigDict(fields_of(model))
  problems.raise_any()
  return c


def validate(c: ml_collections.ConfigDict | Mapping[str, Any]) -> RunConfig:
  """check_fields and check_environment together (nothing is computed before this), on the
  config with its 'checkpoint'-family models read (`resolve_checkpoint_models`): returns the
  typed config the run reads, or raises one ConfigError listing every problem of both, one
  message per field. `c` is a ConfigDict or a nested plain dict of the same fields
  (`base_config().to_dict()`)."""
  c = resolve_checkpoint_models(_as_config_dict(c))
  problems = _Problems()
  typed = _check_fields(c, problems)
  _check_environment(c, problems)
  problems.raise_any()
  return typed
