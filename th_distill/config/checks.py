"""Reading and checking the experiment configuration at the boundary, before any compute.

`load_config_file(path)` runs a config file's `get_config()`. `validate(config)` raises one
`ConfigError` that lists every problem, each with its field and what is allowed. It runs both
halves of the check:
- `check_fields(config)`: the values alone, without devices or files. It composes the typed
  settings' own checks (`problems()` of th_distill.config.settings) with the checks that span sections.
- `check_environment(config)`: what needs this machine or files: the mesh on the local devices,
  the seqio extra, the task's vocabulary file and data directory, and each checkpoint's fit to its
  model.

The defaults (`base_config`, `overfit_config`, `strong_teacher_config`, `paper_config`,
`model_config`, `to_t5_config`) live in th_distill.config.defaults and are importable from here too.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os

import jax
import ml_collections

from th_distill.config.defaults import base_config, to_t5_config
from th_distill.config.settings import DistillSettings, OptimizerSettings, Problem, SamplingSettings
from th_distill.data import prompts as prompt_lib
from th_distill.data import tasks, vocabularies
from th_distill.data.regimes import REGIMES
from th_distill.detection import config as detector_config
from th_distill.errors import EX_USAGE, RunError
from th_distill.models import pretrained
from th_distill.partitioning import resolve_mesh_shape

# Where the online regimes draw prompts: the offline arm's N prompts or the whole pool.
ONLINE_PROMPTS = ("offline", "pool")


class ConfigError(RunError, ValueError):
  """An invalid configuration value; the message names each offending field."""

  exit_code = EX_USAGE


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


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (as `--config=PATH` loads it); ConfigError naming the file
  if it is missing or has no `get_config`."""
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no config file at {path!r}")
  spec = importlib.util.spec_from_file_location("th_distill_config_file", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"--config: {path!r} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {path!r} defines no get_config() function")
  return module.get_config()


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


def _check_fields(c: ml_collections.ConfigDict, problems: _Problems) -> None:
  errors, check = problems.errors, problems.check
  known = dotted_keys(base_config()) + [f"detection.{k}" for k in detector_config.SETTINGS_FIELDS]
  model_keys = ("oracle.model.", "teacher.model.", "student.model.")  # checked by T5Config
  for key in dotted_keys(c):
    if key not in known and not key.startswith(model_keys):
      check(False, key, "no such field" + suggest(key, known))
  for key in _non_finite_fields(c):
    check(False, key, "must be a finite number")
  check(0 <= c.seed < 2**32, "seed", f"must be in [0, 2**32), got {c.seed}")

  regimes = tuple(c.regimes)
  check(len(regimes) > 0, "regimes", "must name at least one regime")
  for regime in regimes:
    check(regime in REGIMES, "regimes", f"unknown regime {regime!r}; allowed: {REGIMES}")
  check(len(set(regimes)) == len(regimes), "regimes", "must not repeat a regime")
  problems.add(SamplingSettings.from_config(c).problems())
  problems.add(OptimizerSettings.sft(c.teacher, c.teacher.steps).problems("teacher"))
  problems.add(DistillSettings.from_config(c).problems())
  check(c.student.sft_steps >= 0, "student.sft_steps", "must be >= 0")
  check(
    math.isfinite(c.teacher.temperature) and c.teacher.temperature > 0,
    "teacher.temperature",
    f"must be a finite number > 0, got {c.teacher.temperature}",
  )
  check(
    c.online.prompts in ONLINE_PROMPTS,
    "online.prompts",
    f"must be one of {ONLINE_PROMPTS}, got {c.online.prompts!r}",
  )
  check(
    0.0 <= c.mixture.student_fraction <= 1.0,
    "mixture.student_fraction",
    f"must be in [0, 1], got {c.mixture.student_fraction}",
  )
  check(
    c.oracle.source in ("synthetic", "checkpoint"),
    "oracle.source",
    f"must be 'synthetic' or 'checkpoint', got {c.oracle.source!r}",
  )
  check(
    c.oracle.source != "checkpoint" or bool(c.oracle.checkpoint),
    "oracle.checkpoint",
    "must be a local checkpoint path when oracle.source = 'checkpoint'",
  )
  check(
    c.student.init in ("scratch", "sft"),
    "student.init",
    f"must be 'scratch' or 'sft', got {c.student.init!r}",
  )
  if c.oracle.source == "synthetic":
    max_entropy = math.log(max(c.task.vocab_size, 1))
    check(
      0 < c.oracle.target_entropy < max_entropy,
      "oracle.target_entropy",
      f"must be in (0, log task.vocab_size = {max_entropy:.3f}) nats, got "
      f"{c.oracle.target_entropy}",
    )
    check(
      c.oracle.weight_scale > 0, "oracle.weight_scale", f"must be > 0, got {c.oracle.weight_scale}"
    )

  check(
    c.task.source in ("synthetic", "seqio"),
    "task.source",
    f"must be 'synthetic' or 'seqio', got {c.task.source!r}",
  )
  for name in ("oracle", "teacher", "student"):
    try:
      model = to_t5_config(c[name].model)
    except (TypeError, ValueError) as e:
      errors.append(f"{name}.model: {e}")
      continue
    check(
      model.vocab_size == c.task.vocab_size,
      f"{name}.model.vocab_size",
      f"{model.vocab_size} differs from task.vocab_size = {c.task.vocab_size}; oracle, "
      "teacher and student must share one vocabulary",
    )

  for key in ("vocab_size", "prompt_length"):
    check(c.task[key] > 0, f"task.{key}", f"must be > 0, got {c.task[key]}")
  for key in ("num_oracle", "num_distill", "num_eval"):
    check(c.prompts[key] > 0, f"prompts.{key}", f"must be > 0, got {c.prompts[key]}")
  if c.task.source == "synthetic":
    tokens = c.task.vocab_size - prompt_lib.FIRST_TOKEN  # ids 0 and 1 never start a prompt
    pool = c.prompts.num_oracle + c.prompts.num_distill + c.prompts.num_eval
    check(
      tokens >= 2,
      "task.vocab_size",
      f"must be >= {prompt_lib.FIRST_TOKEN + 2} for synthetic prompts, got {c.task.vocab_size}",
    )
    # As data.prompts.zipf_prompts requires: 4 x the pool fits in tokens ** prompt_length.
    check(
      tokens < 2
      or c.task.prompt_length <= 0
      or math.log(4 * max(pool, 1)) <= c.task.prompt_length * math.log(tokens),
      "task.prompt_length",
      f"{c.task.prompt_length} tokens over {tokens} ids cannot make "
      f"{pool} distinct prompts (prompts.num_*); use longer prompts or fewer of them",
    )
  n, k = c.offline.num_prompts, c.offline.generations_per_prompt
  check(n > 0, "offline.num_prompts", f"N must be > 0, got {n}")
  check(k > 0, "offline.generations_per_prompt", f"k must be > 0, got {k}")
  check(
    n <= c.prompts.num_distill,
    "offline.num_prompts",
    f"N = {n} exceeds the distillation prompt pool prompts.num_distill = "
    f"{c.prompts.num_distill} (N x k = {n * k} examples are drawn from N distinct prompts)",
  )
  check(c.eval.num_train_prompts > 0, "eval.num_train_prompts", "must be > 0")
  check(c.eval.batch_size > 0, "eval.batch_size", "must be > 0")
  check(c.eval_every > 0, "eval_every", f"must be > 0, got {c.eval_every}")
  check(
    c.eval_log_points >= 0, "eval_log_points", f"must be >= 0 (0 = off), got {c.eval_log_points}"
  )
  check(c.checkpoint_every > 0, "checkpoint_every", f"must be > 0, got {c.checkpoint_every}")
  check(c.hacking_threshold_pct >= 0, "hacking_threshold_pct", "must be >= 0")
  errors.extend(detector_config.problems(c.detection))

  check(
    c.sequence_chunks > 0 and c.task.response_length % c.sequence_chunks == 0,
    "sequence_chunks",
    f"{c.sequence_chunks} must be > 0 and divide task.response_length = {c.task.response_length}",
  )


def _check_environment(
  c: ml_collections.ConfigDict, problems: _Problems, devices: int | None = None
) -> None:
  errors, check = problems.errors, problems.check
  if c.task.source == "seqio":
    check(
      importlib.util.find_spec("seqio") is not None,
      "task.source",
      "'seqio' needs the seqio extra: pip install -e '.[seqio]'",
    )
    errors.extend(tasks.data_errors(c.task.name, c.task.data_dir))
  try:
    vocabulary = vocabularies.task_vocabulary(c.task)
  except (OSError, ValueError, ImportError) as e:
    errors.append(f"task.vocabulary: {e}")
  else:  # each model's vocab_size must equal task.vocab_size (check_fields)
    check(
      vocabulary.fits(c.task.vocab_size),
      "task.vocab_size",
      f"{c.task.vocab_size} embedding rows (every model's vocab_size) cannot hold the "
      f"{vocabulary.vocab_size} ids of {c.task.vocabulary}",
    )
  for name in ("oracle", "teacher", "student"):
    path = c[name].checkpoint if name != "oracle" or c.oracle.source == "checkpoint" else ""
    if not path:
      continue
    try:
      model = to_t5_config(c[name].model)
    except (TypeError, ValueError):  # check_fields names the invalid model sub-config
      continue
    try:
      errors.extend(f"{name}.{problem}" for problem in pretrained.mismatches(path, model))
    except (OSError, ValueError) as e:
      errors.append(f"{name}.checkpoint: {e}")

  try:
    mesh = resolve_mesh_shape(
      c.mesh.data, c.mesh.fsdp, c.mesh.model, jax.device_count() if devices is None else devices
    )
  except ValueError as e:
    errors.append(f"mesh: {e}")
    return
  data_parallel = mesh[0] * mesh[1]
  check(
    c.prompts.num_eval >= data_parallel,
    "prompts.num_eval",
    f"{c.prompts.num_eval} must be at least the {data_parallel} data-parallel devices (the "
    "synthetic oracle is calibrated on held-out prompts, split over them)",
  )
  for field, parts in (("teacher", 1), ("student", max(c.student.micro_batches, 1))):
    check(
      c[field].batch_size % (data_parallel * parts) == 0,
      f"{field}.batch_size",
      f"{c[field].batch_size} must be a multiple of the {data_parallel} data-parallel "
      f"devices (mesh.data x mesh.fsdp = {mesh[0]} x {mesh[1]})"
      + (f" times student.micro_batches = {parts}" if parts > 1 else ""),
    )


def check_fields(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid value of `c`, judged from the values alone (no
  device, file or checkpoint is read): one message per field, the first problem found."""
  problems = _Problems()
  _check_fields(c, problems)
  problems.raise_any()


def check_environment(c: ml_collections.ConfigDict, devices: int | None = None) -> None:
  """Raises ConfigError listing what keeps `c` from running here: its mesh on `devices` (default:
  jax.device_count()) and the batches and evaluation prompts split over it, the seqio extra, the
  task's vocabulary file and data directory, and each checkpoint's fit to its model."""
  problems = _Problems()
  _check_environment(c, problems, devices)
  problems.raise_any()


def validate(c: ml_collections.ConfigDict) -> None:
  """check_fields and check_environment together (nothing is computed before this): raises one
  ConfigError listing every problem of both, one message per field."""
  problems = _Problems()
  _check_fields(c, problems)
  _check_environment(c, problems)
  problems.raise_any()
